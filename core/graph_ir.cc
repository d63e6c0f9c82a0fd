// GraphNode / GraphView indexes and the copy-on-write dispatch of graph edits.
#include "core/graph_ir.h"

#include "core/status.h"

namespace compress {

GraphNode::GraphNode(std::string name, std::string op_type, std::string domain,
                     std::vector<std::string> inputs, std::vector<std::string> outputs,
                     std::map<std::string, GraphAttribute> attributes)
    : name_(std::move(name)),
      op_type_(std::move(op_type)),
      domain_(std::move(domain)),
      inputs_(std::move(inputs)),
      outputs_(std::move(outputs)),
      attributes_(std::move(attributes)) {}

const std::string& GraphNode::DisplayName() const {
  return name_.empty() && !outputs_.empty() ? outputs_[0] : name_;
}

const GraphAttribute* GraphNode::attribute(const std::string& key) const {
  auto it = attributes_.find(key);
  return it == attributes_.end() ? nullptr : &it->second;
}

int64_t GraphNode::IntAttribute(const std::string& key, int64_t def) const {
  const GraphAttribute* a = attribute(key);
  const int64_t* v = a ? std::get_if<int64_t>(a) : nullptr;
  return v ? *v : def;
}

double GraphNode::FloatAttribute(const std::string& key, double def) const {
  const GraphAttribute* a = attribute(key);
  if (!a) return def;
  if (const double* v = std::get_if<double>(a)) return *v;
  if (const int64_t* v = std::get_if<int64_t>(a)) return static_cast<double>(*v);
  return def;
}

std::string GraphNode::StringAttribute(const std::string& key, const std::string& def) const {
  const GraphAttribute* a = attribute(key);
  const std::string* v = a ? std::get_if<std::string>(a) : nullptr;
  return v ? *v : def;
}

std::vector<int64_t> GraphNode::IntsAttribute(const std::string& key) const {
  const GraphAttribute* a = attribute(key);
  const auto* v = a ? std::get_if<std::vector<int64_t>>(a) : nullptr;
  return v ? *v : std::vector<int64_t>{};
}

std::vector<double> GraphNode::FloatsAttribute(const std::string& key) const {
  const GraphAttribute* a = attribute(key);
  const auto* v = a ? std::get_if<std::vector<double>>(a) : nullptr;
  return v ? *v : std::vector<double>{};
}

const Tensor* GraphNode::TensorAttribute(const std::string& key) const {
  const GraphAttribute* a = attribute(key);
  return a ? std::get_if<Tensor>(a) : nullptr;
}

GraphView::GraphView(std::vector<GraphNode> nodes, GraphSignature signature)
    : nodes_(std::move(nodes)), signature_(std::move(signature)) {
  for (const auto& i : signature_.inputs) inputs_.push_back(i.name);
  for (const auto& o : signature_.outputs) outputs_.push_back(o.name);
  for (int i = 0; i < node_size(); ++i) {
    const GraphNode& n = nodes_[i];
    for (int k = 0; k < n.input_size(); ++k) {
      if (!n.input(k).empty()) consumers_[n.input(k)].push_back({i, k});
    }
    for (const auto& o : n.outputs()) {
      if (!o.empty()) producer_[o] = i;
    }
  }
}

bool GraphView::IsOutput(const std::string& value) const {
  for (const auto& o : outputs_) {
    if (o == value) return true;
  }
  return false;
}

int GraphView::Producer(const std::string& value) const {
  auto it = producer_.find(value);
  return it == producer_.end() ? -1 : it->second;
}

const std::vector<GraphUse>& GraphView::Consumers(const std::string& value) const {
  static const std::vector<GraphUse> kNone;
  auto it = consumers_.find(value);
  return it == consumers_.end() ? kNone : it->second;
}

int GraphView::OnlyConsumer(const std::string& value) const {
  const auto& uses = Consumers(value);
  return uses.size() == 1 ? uses[0].node : -1;
}

int GraphView::Opset(const std::string& domain) const {
  auto it = signature_.opsets.find(domain);
  return it == signature_.opsets.end() ? 1 : it->second;
}

std::shared_ptr<const GraphView> GraphPayload::shared_view() const {
  if (!view_) view_ = std::make_shared<const GraphView>(BuildView());
  return view_;
}

const GraphView* ModelGraph(const Model& model) {
  const auto* g = dynamic_cast<const GraphPayload*>(model.payload.get());
  return g ? &g->view() : nullptr;
}

std::shared_ptr<const GraphView> SharedModelGraph(const Model& model) {
  const auto* g = dynamic_cast<const GraphPayload*>(model.payload.get());
  return g ? g->shared_view() : nullptr;
}

namespace {

// The model's graph payload, copied first when another Model shares it.
absl::StatusOr<GraphPayload*> MutableGraph(Model& model) {
  if (!dynamic_cast<const GraphPayload*>(model.payload.get())) {
    return InvalidArgument("{}: not a graph model (ONNX)", model.source);
  }
  if (model.payload.use_count() > 1) model.payload = model.payload->Clone();
  return dynamic_cast<GraphPayload*>(model.payload.get());
}

}  // namespace

absl::Status SetGraphNodeAttribute(Model& model, const std::string& node, const std::string& attr,
                                   int64_t value) {
  ASSIGN_OR_RETURN(GraphPayload * g, MutableGraph(model));
  return g->SetNodeAttribute(node, attr, value);
}

absl::Status DropGraphValueInfo(Model& model, const std::vector<std::string>& values) {
  ASSIGN_OR_RETURN(GraphPayload * g, MutableGraph(model));
  return g->DropValueInfo(values);
}

absl::StatusOr<std::vector<std::string>> BypassGraphValues(Model& model,
                                                           const std::map<std::string, std::string>& bypass) {
  ASSIGN_OR_RETURN(GraphPayload * g, MutableGraph(model));
  return g->Bypass(model, bypass);
}

}  // namespace compress
