// `run --resume`: a calibrated run killed after some blocks continues from its journal
// (core/resume_journal.h) and writes the same bytes and report entries as an uninterrupted
// run; journals of other runs and folders that are not journals are refused, never removed.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;

struct ResumeCase {
  std::string pipeline;
  int kill_after;  // checkpoints (one per block with COMPRESS_CHECKPOINT_SECONDS=0; pycode-tiny has 4 blocks)
};

class Resume : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::SharedModel("pycode-tiny");
    text_ = std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt";
    if (!fs::exists(model_) || !fs::exists(text_)) GTEST_SKIP() << "shared models absent";
  }
  void TearDown() override {
    unsetenv("COMPRESS_CHECKPOINT_SECONDS");
    unsetenv("COMPRESS_JOURNAL_KILL_AFTER");
    unsetenv("COMPRESS_MEMORY_BUDGET");
  }
  testing::CommandResult Run(const std::string& pipeline, const std::string& out, const std::string& extra = "") {
    return testing::RunCompress("run '" + model_ + "' -q -p '" + pipeline + "' -o '" + out + "' --report '" + out +
                                    ".json' --calibration '" + text_ + "' --calib-samples 8 --calib-seqlen 128 " +
                                    extra,
                                d_.path().string());
  }
  // A GPTQ run into `out` killed after its first block's checkpoint (its journal beside it).
  void KillGptqAfterOneBlock(const std::string& out) {
    setenv("COMPRESS_CHECKPOINT_SECONDS", "0", 1);
    setenv("COMPRESS_JOURNAL_KILL_AFTER", "1", 1);
    Run("quantize-gptq{bits=4,group-size=32}", out);
    unsetenv("COMPRESS_JOURNAL_KILL_AFTER");
    ASSERT_TRUE(fs::exists(fs::path(out).parent_path() / ("." + fs::path(out).filename().string() +
                                                           ".compress-resume/journal.json")));
  }
  // `path` written anew with `bytes`, its modification time `seconds` later than now.
  static void Rewrite(const std::string& path, const std::string& bytes, int seconds) {
    fs::remove(path);
    testing::WriteFile(path, bytes);
    fs::last_write_time(path, fs::last_write_time(path) + std::chrono::seconds(seconds));
  }
  // The passes' entries of a JSON report without timings.
  static nlohmann::json Passes(const std::string& report_path) {
    nlohmann::json j = nlohmann::json::parse(testing::ReadFile(report_path));
    nlohmann::json passes = j.at("passes");
    for (auto& p : passes) p.erase("seconds");
    return passes;
  }
  std::string model_, text_;
  testing::ScratchDir d_;
};

TEST_F(Resume, AKilledRunContinuesFromItsLastBlockAndWritesTheSameBytes) {
  const std::vector<ResumeCase> cases = {
      {"quantize-gptq{bits=4,group-size=32}", 2},
      {"prune-obs{sparsity=0.5}", 1},
      {"prune-magnitude{sparsity=0.5,score=wanda}", 3},
      // Killed in the second pass: the first is replayed whole from the journal.
      {"prune-sparsegpt{sparsity=0.5},quantize-gptq{bits=4,group-size=32,act-order=true}", 6},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.pipeline);
    const std::string whole = d_ / "whole", out = d_ / "resumed";
    const std::string journal = d_ / ".resumed.compress-resume";
    auto r = Run(c.pipeline, whole);
    ASSERT_EQ(r.exit_code, 0) << r.err;

    setenv("COMPRESS_CHECKPOINT_SECONDS", "0", 1);
    setenv("COMPRESS_JOURNAL_KILL_AFTER", std::to_string(c.kill_after).c_str(), 1);
    r = Run(c.pipeline, out);
    unsetenv("COMPRESS_JOURNAL_KILL_AFTER");
    EXPECT_NE(r.exit_code, 0) << "the run was to be killed after " << c.kill_after << " blocks";
    EXPECT_FALSE(fs::exists(out)) << "a killed run left an output";
    ASSERT_TRUE(fs::exists(fs::path(journal) / "journal.json"));

    r = Run(c.pipeline, out, "--resume");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_FALSE(fs::exists(journal)) << "the journal outlived a finished run";
    EXPECT_TRUE(testing::ReadFile(whole + "/model.safetensors") == testing::ReadFile(out + "/model.safetensors"))
        << "the resumed run wrote other bytes";
    EXPECT_EQ(Passes(whole + ".json"), Passes(out + ".json"));
    const auto report = nlohmann::json::parse(testing::ReadFile(out + ".json"));
    ASSERT_TRUE(report.contains("resumed"));
    EXPECT_NE(report["resumed"].get<std::string>().find("blocks from the journal"), std::string::npos);
    fs::remove_all(whole);
    fs::remove_all(out);
  }
}

// Past the memory limit for held results (COMPRESS_MEMORY_BUDGET, here 1 byte) every layer's
// result is read back from its journal record by the driver's reload and the writer: the same
// bytes as a run holding them, also when killed and resumed (replayed results read from the
// killed run's records); nothing is left beside the output. quantize-gguf's GPTQ solves
// (method=auto with calibration) are journaled and held the same way (a GGUF file output).
TEST_F(Resume, ResultsPastTheMemoryLimitAreSpilledAndWriteTheSameBytes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"quantize-gptq{bits=4,group-size=32}", ""},
      {"prune-sparsegpt{sparsity=0.5}", ""},
      {"quantize-gguf{type=Q4_K_M}", ".gguf"}};
  for (const auto& [pipeline, suffix] : cases) {
    SCOPED_TRACE(pipeline);
    const std::string held = d_ / ("held" + suffix), spilled = d_ / ("spilled" + suffix),
                      resumed = d_ / ("resumed" + suffix);
    // The model's bytes: the file itself, or a folder's model.safetensors.
    auto bytes = [](const std::string& out) {
      return testing::ReadFile(fs::is_directory(out) ? out + "/model.safetensors" : out);
    };
    auto journal = [&](const std::string& out) { return d_ / ("." + fs::path(out).filename().string() + ".compress-resume"); };
    auto r = Run(pipeline, held);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    setenv("COMPRESS_MEMORY_BUDGET", "1", 1);
    r = Run(pipeline, spilled);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(bytes(held) == bytes(spilled));
    EXPECT_EQ(Passes(held + ".json"), Passes(spilled + ".json"));
    EXPECT_FALSE(fs::exists(journal(spilled)));

    setenv("COMPRESS_CHECKPOINT_SECONDS", "0", 1);
    setenv("COMPRESS_JOURNAL_KILL_AFTER", "2", 1);
    r = Run(pipeline, resumed);
    unsetenv("COMPRESS_JOURNAL_KILL_AFTER");
    EXPECT_NE(r.exit_code, 0);
    // Journaled results are read back from the journal's own records: nothing spilled again.
    EXPECT_TRUE(fs::exists(fs::path(journal(resumed)) / "journal.json"));
    EXPECT_FALSE(fs::exists(fs::path(journal(resumed)) / "results.spill"));
    r = Run(pipeline, resumed, "--resume");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(bytes(held) == bytes(resumed));
    EXPECT_EQ(Passes(held + ".json"), Passes(resumed + ".json"));
    EXPECT_NE(testing::ReadFile(resumed + ".json").find("blocks from the journal"), std::string::npos);
    EXPECT_FALSE(fs::exists(journal(resumed)));
    unsetenv("COMPRESS_MEMORY_BUDGET");
    unsetenv("COMPRESS_CHECKPOINT_SECONDS");
    for (const auto& p : {held, spilled, resumed}) fs::remove_all(p);
  }
}

// A run that fails on its input or pipeline (here: GPTQ's f32 scales, which no GGUF block type
// holds, found by the writer after two calibrated passes journaled their blocks) would fail the same way on a resume: exit 2 and
// no journal left beside the output.
TEST_F(Resume, AFailureOfTheInputLeavesNoJournal) {
  const std::string out = d_ / "out.gguf";
  auto r = Run("prune-sparsegpt{sparsity=0.5},quantize-gptq{bits=4,group-size=32},quantize-gguf{type=Q4_K_M}", out);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("not an f16 value"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(d_ / ".out.gguf.compress-resume"));
}

TEST_F(Resume, AnotherRunsJournalIsRefusedAndAForeignFolderIsNeverTouched) {
  const std::string out = d_ / "out", journal = d_ / ".out.compress-resume";
  setenv("COMPRESS_CHECKPOINT_SECONDS", "0", 1);
  setenv("COMPRESS_JOURNAL_KILL_AFTER", "2", 1);
  auto r = Run("quantize-gptq{bits=4,group-size=32}", out);
  unsetenv("COMPRESS_JOURNAL_KILL_AFTER");
  ASSERT_TRUE(fs::exists(fs::path(journal) / "journal.json"));

  // Another pipeline with --resume: exit 2 naming the difference; the journal stays.
  r = Run("quantize-gptq{bits=3,group-size=32}", out, "--resume");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("different run"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("pipeline"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(fs::path(journal) / "journal.json"));

  // Without --resume: starts over, saying it removed the old journal.
  r = Run("quantize-gptq{bits=3,group-size=32}", out, "");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(journal));
  fs::remove_all(out);

  // A folder of the user's at the journal's path: refused, left as it was.
  fs::create_directories(journal);
  testing::WriteFile((fs::path(journal) / "notes.txt").string(), "mine");
  r = Run("quantize-gptq{bits=4,group-size=32}", out, "--resume");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not a compress resume journal"), std::string::npos) << r.err;
  EXPECT_EQ(testing::ReadFile((fs::path(journal) / "notes.txt").string()), "mine");
  EXPECT_FALSE(fs::exists(out));
}

// The journal is tied to the input's files: a model changed since the killed run (here its
// weights file rewritten) is refused with --resume instead of mixing two models' results.
TEST_F(Resume, AChangedModelFileIsRefused) {
  const std::string copy = d_ / "model";
  fs::copy(model_, copy);
  model_ = copy;
  const std::string out = d_ / "out";
  ASSERT_NO_FATAL_FAILURE(KillGptqAfterOneBlock(out));
  const std::string weights = copy + "/model.safetensors";
  Rewrite(weights, testing::ReadFile(weights), 5);  // same bytes, a new file: size equal, modification time not
  auto r = Run("quantize-gptq{bits=4,group-size=32}", out, "--resume");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("files"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

// The calibration text is tied by the hash of its token windows, not its file's time: the same
// text copied again (a re-synced data folder) resumes; another text is refused.
TEST_F(Resume, TheSameCalibrationTextRewrittenResumesAndAnotherIsRefused) {
  const std::string copy = d_ / "calib.txt";
  const std::string text = testing::ReadFile(text_);
  testing::WriteFile(copy, text);
  text_ = copy;
  const std::string out = d_ / "out";
  ASSERT_NO_FATAL_FAILURE(KillGptqAfterOneBlock(out));
  Rewrite(copy, "def other():\n    return 1\n" + text, 5);
  auto r = Run("quantize-gptq{bits=4,group-size=32}", out, "--resume");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("calibration"), std::string::npos) << r.err;
  Rewrite(copy, text, 10);
  r = Run("quantize-gptq{bits=4,group-size=32}", out, "--resume");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  const auto report = nlohmann::json::parse(testing::ReadFile(out + ".json"));
  ASSERT_TRUE(report.contains("resumed"));
}

}  // namespace
}  // namespace compress
