// tokenizer.json post-processor templates (see the header).
#include "formats/tokenizer_template.h"

namespace compress {

SingleTemplate SingleSequenceTemplate(const nlohmann::json& tok) {
  SingleTemplate out;
  if (!tok.is_object() || !tok.contains("post_processor") || !tok["post_processor"].is_object()) return out;
  const nlohmann::json& pp = tok["post_processor"];
  std::vector<const nlohmann::json*> procs;
  if (pp.value("type", "") == "Sequence") {
    if (pp.contains("processors") && pp["processors"].is_array())
      for (const auto& p : pp["processors"]) procs.push_back(&p);
  } else {
    procs.push_back(&pp);
  }
  for (const nlohmann::json* p : procs) {
    if (!p->is_object() || p->value("type", "") != "TemplateProcessing" || !p->contains("single") ||
        !(*p)["single"].is_array())
      continue;
    const nlohmann::json* specials =
        p->contains("special_tokens") && (*p)["special_tokens"].is_object() ? &(*p)["special_tokens"] : nullptr;
    bool after = false;
    for (const auto& item : (*p)["single"]) {
      if (!item.is_object()) continue;
      if (item.contains("Sequence")) {
        after = true;
        continue;
      }
      if (!item.contains("SpecialToken") || !item["SpecialToken"].is_object()) continue;
      const auto& id = item["SpecialToken"];
      TemplateToken t;
      t.name = id.contains("id") && id["id"].is_string() ? id["id"].get<std::string>() : "";
      if (specials && specials->contains(t.name) && (*specials)[t.name].is_object()) {
        t.ids.emplace();
        const auto& entry = (*specials)[t.name];
        if (entry.contains("ids") && entry["ids"].is_array())
          for (const auto& v : entry["ids"])
            if (v.is_number_integer()) t.ids->push_back(v.get<int64_t>());
      }
      (after ? out.after : out.before).push_back(std::move(t));
    }
  }
  return out;
}

nlohmann::json BosEosTemplate(const std::optional<TemplateSpecial>& bos, const std::optional<TemplateSpecial>& eos) {
  if (!bos && !eos) return nullptr;
  nlohmann::json single = nlohmann::json::array(), pair = nlohmann::json::array(), special = nlohmann::json::object();
  auto special_item = [&](const TemplateSpecial& t, int type_id) {
    special[t.piece] = {{"id", t.piece}, {"ids", {t.id}}, {"tokens", {t.piece}}};
    return nlohmann::json{{"SpecialToken", {{"id", t.piece}, {"type_id", type_id}}}};
  };
  for (int seq = 0; seq < 2; ++seq) {
    auto& dst = seq == 0 ? single : pair;
    for (int part = 0; part <= seq; ++part) {
      if (bos) dst.push_back(special_item(*bos, part));
      dst.push_back({{"Sequence", {{"id", part == 0 ? "A" : "B"}, {"type_id", part}}}});
      if (eos) dst.push_back(special_item(*eos, part));
    }
  }
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special}};
}

}  // namespace compress
