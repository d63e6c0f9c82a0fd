// `compress` command line: argument parsing and exit codes (0 ok, 1 usage, 2 bad input, 3 internal).
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "core/distributed.h"
#include "core/process_settings.h"
#include "core/version.h"
#include "core/staging.h"

namespace {

// Ctrl-C / SIGTERM: a watcher thread (signals are blocked everywhere else, OpenMP workers
// included) removes half-written staging folders, then exits 130 like a shell would.
void InstallInterruptCleanup() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) return;
    compress::RemoveLiveStagingDirs();
    std::fprintf(stderr, "\ncompress: interrupted; no output written\n");
    std::_Exit(130);
  }).detach();
}

}  // namespace

namespace {

// `compress run`: the options of a compression run.
CLI::App* AddRunCommand(CLI::App& app, compress::RunArgs& ra) {
  CLI::App* run = app.add_subcommand("run", "run a compression pipeline and write the compressed model");
  run->add_option("model", ra.model, "input model")->required();
  auto* p = run->add_option("-p,--pipeline", ra.pipeline, "pipeline text, e.g. 'cast{dtype=bf16}'");
  auto* r = run->add_option("-r,--recipe", ra.recipe, "YAML recipe file");
  p->excludes(r);
  run->add_option("-o,--output", ra.out, "output folder (safetensors), .onnx or .gguf path");
  run->add_flag("--force", ra.force,
                "replace an existing output (a file, or a folder holding only a model checkpoint)");
  run->add_option("--stats", ra.stats,
                  "keep the calibration statistics in this file and reuse them when a later run has the same model "
                  "and calibration");
  run->add_flag("--resume", ra.resume,
                "continue a run that was killed or interrupted from its last checkpoint (same command); without "
                "an earlier run's journal it runs from the start");
  run->add_option("--report", ra.report, "write the JSON report here");
  run->add_option("--report-md", ra.report_md, "write the Markdown summary here");
  run->add_flag("--dry-run", ra.dry_run, "print the canonical pipeline and plan; write nothing");
  run->add_option("--threads", ra.threads, "worker threads (default: all cores)")->check(CLI::Range(1, 1024));
  run->add_flag("-q,--quiet", ra.quiet, "no progress and no summary");
  run->add_option("--max-shard-size", ra.max_shard_size, "split safetensors output, e.g. 2GB");
  run->add_option("--sparse-storage", ra.sparse_storage,
                  "safetensors: store weights that are N:M sparse compressed, e.g. 2:4 (compressed-tensors "
                  "sparse-24-bitmask, which vLLM loads; other N:M in compress's form), or bitmask (compressed-tensors "
                  "sparse-bitmask: any weight it makes smaller) (default dense)");
  run->add_option("--external-data", ra.external_data, "ONNX weights in a side file")
      ->check(CLI::IsMember({"auto", "always", "never"}));
  run->add_option("--print-after", ra.print_after, "dump tensor dtypes/shapes to stderr after this pass")
      ->allow_extra_args(false);
  run->add_option("--plugin", ra.plugins, "load passes from this plugin library (repeatable)")
      ->allow_extra_args(false);
  run->add_option("--calibration", ra.calibration,
                  "calibration text (or JSON token ids) for passes that need it");
  run->add_option("--calib-samples", ra.calib_samples, "calibration windows (default 128)")
      ->check(CLI::Range(1, 1 << 20));
  run->add_option("--calib-seqlen", ra.calib_seqlen, "tokens per calibration window (default 512)")
      ->check(CLI::Range(2, 1 << 20));
  run->add_option("--calib-precision", ra.calib_precision,
                  "LLM calibration arithmetic: f32 (default: f32 block forwards, X^T X in f64) or bf16 (bf16 "
                  "products in the forwards, each window's X^T X in f32: about twice as fast, other statistics)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  run->add_option("--seed", ra.seed, "seed for sampling calibration windows (default 0)")
      ->check(CLI::NonNegativeNumber);
  run->add_option("--min-expert-tokens", ra.min_expert_tokens,
                  "MoE: an expert routed fewer calibration tokens gets data-free statistics, reported (default 64)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  run->add_option("--eval-text", ra.eval_text, "report perplexity of input and output on this text");
  run->add_option("--eval-tokens", ra.eval_tokens, "evaluate the first N tokens (default 16384)")
      ->check(CLI::Range(2, 1 << 30));
  run->add_option("--eval-ctx", ra.eval_ctx, "evaluation window (default 512)")
      ->check(CLI::Range(2, 1 << 20));

  return run;
}

// `compress decompress`: dense weights back (`dtype` is the dense type asked for).
CLI::App* AddDecompressCommand(CLI::App& app, compress::RunArgs& da, std::string& decompress_dtype) {
  CLI::App* decompress = app.add_subcommand("decompress", "restore dense weights from a quantized model");
  decompress->add_option("model", da.model, "quantized model")->required();
  decompress->add_option("-o,--output", da.out, "output folder or .onnx path")->required();
  decompress->add_flag("--force", da.force,
                       "replace an existing output (a file, or a folder holding only a model checkpoint)");
  decompress->add_option("--dtype", decompress_dtype, "dense type (default: the type before quantization)")
      ->check(CLI::IsMember({"original", "f32", "f16", "bf16"}));
  decompress->add_flag("-q,--quiet", da.quiet, "no progress and no summary");
  decompress->add_option("--report", da.report, "write the JSON report here");

  return decompress;
}

// `compress eval`: perplexity, and ONNX output agreement.
CLI::App* AddEvalCommand(CLI::App& app, compress::EvalArgs& ea) {
  CLI::App* eval = app.add_subcommand(
      "eval", "perplexity on text or token ids; for .onnx also output agreement with a reference model");
  eval->add_option("model", ea.model, "model folder, .safetensors or .onnx file")->required();
  auto* et =
      eval->add_option("--text", ea.text, "UTF-8 text file (tokenized with the model's tokenizer.json)");
  auto* ek = eval->add_option("--tokens", ea.tokens, "token ids: JSON array or whitespace-separated");
  et->excludes(ek);
  eval->add_option("--ctx", ea.ctx, "window length in tokens")->check(CLI::Range(2, 1 << 20));
  eval->add_option("--stride", ea.stride, "tokens between window starts (default: ctx)")
      ->check(CLI::Range(1, 1 << 20));
  eval->add_option("--max-tokens", ea.max_tokens, "evaluate only the first N tokens")
      ->check(CLI::Range(2, 1 << 30));
  eval->add_option("--reference", ea.reference, "ONNX: run this model on the same inputs and compare outputs");
  eval->add_option("--inputs", ea.inputs,
                   "ONNX: folder of input_N.pb tensors (and expected output_N.pb), or of such folders");
  eval->add_option("--samples", ea.samples, "ONNX: generated input sets when no --inputs (default 4)")
      ->check(CLI::Range(1, 1 << 20));
  eval->add_option("--seed", ea.seed, "ONNX: seed of the generated inputs (default 0)");
  eval->add_option("--dim", ea.dims, "ONNX: NAME=SIZE for a symbolic input dimension (repeatable)")
      ->allow_extra_args(false);
  eval->add_option("--int-high", ea.int_high, "ONNX: generated integer inputs lie in [0, N) (default 256)")
      ->check(CLI::Range(1, 1 << 30));
  eval->add_option("--tolerance", ea.tolerance,
                   "ONNX: exit 4 when an output's max relative error (max|a-b| / max|ref|) exceeds this")
      ->check(CLI::Range(0.0, 1e300));
  eval->add_flag("--json", ea.json, "machine-readable output");
  eval->add_flag("-q,--quiet", ea.quiet, "no progress");
  eval->add_option("--threads", ea.threads, "worker threads")->check(CLI::Range(1, 1024));
  eval->add_option("--matmul", ea.matmul,
                   "LLMs: auto (default: native where the CPU has AVX-512 VNNI/BF16 or AVX2/FMA and the model bf16 or "
                   "quantized linear weights, else f32), f32 (every weight decoded to f32: the same numbers on "
                   "every CPU) or native (bf16, int4/int8 g32 and GGUF block weights stay packed; llama.cpp's CPU "
                   "numerics: bf16 or int8 activations), or bf16 (native, with f32 and f16 weights rounded to "
                   "bf16 at load: faster, not their exact values)")
      ->check(CLI::IsMember({"auto", "f32", "native", "bf16"}));

  return eval;
}

// `compress imatrix`: llama.cpp importance matrices from calibration text.
CLI::App* AddImatrixCommand(CLI::App& app, compress::ImatrixArgs& ma) {
  CLI::App* imatrix = app.add_subcommand(
      "imatrix", "write llama.cpp's importance matrix (for llama-quantize --imatrix) from calibration text");
  imatrix->add_option("model", ma.model, "model folder, .safetensors or .gguf")->required();
  imatrix->add_option("--calibration", ma.calibration, "calibration text (or JSON token ids)")->required();
  imatrix->add_option("-o,--output", ma.out, "output .gguf path")->required();
  imatrix->add_flag("--force", ma.force, "replace an existing output file");
  imatrix->add_option("--calib-samples", ma.samples, "calibration windows (default 128)")
      ->check(CLI::Range(1, 1 << 20));
  imatrix->add_option("--calib-seqlen", ma.seqlen, "tokens per window (default 512)")->check(CLI::Range(2, 1 << 20));
  imatrix->add_option("--seed", ma.seed, "seed for sampling windows (default 0)");
  imatrix->add_option("--calib-precision", ma.precision, "f32 (default) or bf16 products in the forwards (as run's)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  imatrix->add_option("--min-expert-tokens", ma.min_expert_tokens,
                      "MoE: an expert routed fewer tokens is written as having no data (default 64)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  imatrix->add_flag("-q,--quiet", ma.quiet, "no progress and no summary");
  imatrix->add_option("--threads", ma.threads, "worker threads")->check(CLI::Range(1, 1024));

  return imatrix;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace compress;
  UseProcessSettings(argv);  // first: it may start the process again
  if (absl::Status s = dist::Init(&argc, &argv); !s.ok()) {
    std::fprintf(stderr, "compress: error: %s\n", std::string(s.message()).c_str());
    return ExitCodeFor(s);
  }
  InstallInterruptCleanup();
  CLI::App app{"compress: make trained models smaller and report what it cost"};
  app.set_version_flag("--version", std::string("compress ") + COMPRESS_VERSION);
  app.require_subcommand(1);

  InspectArgs ia;
  auto* inspect = app.add_subcommand("inspect", "show a model's architecture, layers, parameters and bytes");
  inspect->add_option("model", ia.model, "model folder, .safetensors or .onnx")->required();
  inspect->add_flag("--json", ia.json, "machine-readable output");

  RunArgs ra;
  CLI::App* run = AddRunCommand(app, ra);

  RunArgs da;
  std::string decompress_dtype = "original";
  CLI::App* decompress = AddDecompressCommand(app, da, decompress_dtype);

  EvalArgs ea;
  CLI::App* eval = AddEvalCommand(app, ea);

  ImatrixArgs ma;
  CLI::App* imatrix = AddImatrixCommand(app, ma);

  PassesArgs pa;
  auto* passes = app.add_subcommand("passes", "list passes, or show one pass's options");
  passes->add_option("name", pa.name, "pass name");
  passes->add_option("--plugin", pa.plugins, "also list the passes of this plugin library (repeatable)")
      ->allow_extra_args(false);
  passes->add_flag("--json", pa.json, "machine-readable output");

  try {
    app.parse(argc, argv);
    if (run->parsed() && ra.pipeline.empty() && ra.recipe.empty()) {
      throw CLI::ValidationError("run: give a pipeline with -p or a recipe with -r");
    }
    if (run->parsed() && ra.out.empty() && !ra.dry_run) {
      throw CLI::ValidationError("run: give the output with -o OUT (or --dry-run)");
    }
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "compress: usage: %s (see compress --help)\n", e.what());
    return 1;
  }

  absl::Status s;
  // Under MPI every rank runs `run`, `decompress` and `imatrix` (the calibration windows are
  // split over the ranks; rank 0 writes); the other commands run on rank 0 only.
  const bool spread = run->parsed() || decompress->parsed() || imatrix->parsed();
  try {
    if (dist::Rank() != 0 && !spread)
      s = absl::OkStatus();
    else if (inspect->parsed())
      s = InspectCommand(ia);
    else if (run->parsed())
      s = RunCommand(ra);
    else if (passes->parsed())
      s = PassesCommand(pa);
    else if (eval->parsed())
      s = EvalCommand(ea);
    else if (imatrix->parsed())
      s = ImatrixCommand(ma);
    else if (decompress->parsed()) {
      da.pipeline = "dequantize{dtype=" + decompress_dtype + "}";
      s = RunCommand(da);
    }
  } catch (const std::exception& e) {
    s = absl::InternalError(std::string("unexpected exception: ") + e.what());
  }
  if (!s.ok()) {
    std::string msg(s.message());
    for (char& c : msg) {
      if (c == '\n') c = ' ';
    }
    if (dist::Active()) {
      std::fprintf(stderr, "compress: error (rank %d of %d): %s\n", dist::Rank(), dist::Size(), msg.c_str());
      dist::AbortAll(ExitCodeFor(s));  // the other ranks may be waiting for this one
    } else {
      std::fprintf(stderr, "compress: error: %s\n", msg.c_str());
    }
  }
  dist::Finalize();
  return ExitCodeFor(s);
}
