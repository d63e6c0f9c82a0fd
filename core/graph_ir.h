// The graph IR: a format-neutral view of a model's computation graph (ONNX today) with
// use-def indexes, and the typed edits passes make to it. Passes read and edit graphs only
// through this header; formats/ implements it (formats/onnx_io.cc for ONNX).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"

namespace compress {

// An attribute value: int, float, string, a list of one of them, or a tensor (a Constant's
// value). Graph-valued attributes (control-flow bodies) are not represented; neither are
// tensors of a type the store has no DType for.
using GraphAttribute = std::variant<int64_t, double, std::string, std::vector<int64_t>, std::vector<double>,
                                    std::vector<std::string>, Tensor>;

class GraphNode {
 public:
  GraphNode(std::string name, std::string op_type, std::string domain, std::vector<std::string> inputs,
            std::vector<std::string> outputs, std::map<std::string, GraphAttribute> attributes);

  const std::string& name() const { return name_; }
  const std::string& op_type() const { return op_type_; }
  const std::string& domain() const { return domain_; }  // "" = the default ONNX domain
  // Inputs in slot order; "" marks an omitted optional input.
  const std::vector<std::string>& inputs() const { return inputs_; }
  const std::string& input(int k) const { return inputs_.at(k); }
  int input_size() const { return static_cast<int>(inputs_.size()); }
  const std::vector<std::string>& outputs() const { return outputs_; }
  const std::string& output(int k) const { return outputs_.at(k); }
  int output_size() const { return static_cast<int>(outputs_.size()); }
  // The node's name, or its first output's when it has none (how edits address nodes).
  const std::string& DisplayName() const;

  const GraphAttribute* attribute(const std::string& key) const;
  // The integer attribute `key`, or `def` when the node has none of that type.
  int64_t IntAttribute(const std::string& key, int64_t def) const;
  // The float attribute `key` (an int one converted), or `def`.
  double FloatAttribute(const std::string& key, double def) const;
  // The string attribute `key`, or `def`.
  std::string StringAttribute(const std::string& key, const std::string& def) const;
  // The int / float list attribute `key`; empty when absent.
  std::vector<int64_t> IntsAttribute(const std::string& key) const;
  std::vector<double> FloatsAttribute(const std::string& key) const;
  // The tensor attribute `key`, or null.
  const Tensor* TensorAttribute(const std::string& key) const;

 private:
  std::string name_, op_type_, domain_;
  std::vector<std::string> inputs_, outputs_;
  std::map<std::string, GraphAttribute> attributes_;
};

// Where a value is read: node index and input slot.
struct GraphUse {
  int node = 0;
  int slot = 0;
};

// A graph input or output as declared: element type and shape (-1 for a symbolic or unknown
// dimension, with its name in dim_names where the file gives one).
struct GraphValueInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<std::string> dim_names;
};

// The parts of a graph besides its nodes.
struct GraphSignature {
  std::vector<GraphValueInfo> inputs;   // fed at run time (constants excluded)
  std::vector<GraphValueInfo> outputs;
  std::map<std::string, int> opsets;    // domain ("" = default ONNX) -> version
};

// Nodes in topological order (as the file stores them) with producer and consumer indexes.
// Constants (initializers) are the model's tensors: `Model::tensors.contains(value)`.
class GraphView {
 public:
  GraphView(std::vector<GraphNode> nodes, GraphSignature signature);

  int node_size() const { return static_cast<int>(nodes_.size()); }
  const GraphNode& node(int i) const { return nodes_.at(i); }
  const std::vector<std::string>& inputs() const { return inputs_; }  // fed at run time
  const std::vector<std::string>& outputs() const { return outputs_; }
  const GraphSignature& signature() const { return signature_; }
  // The opset version of `domain` ("" = default ONNX), or 1 when the graph imports none.
  int Opset(const std::string& domain) const;
  bool IsOutput(const std::string& value) const;
  // The node that computes `value`, or -1 (a graph input, a constant, or unknown).
  int Producer(const std::string& value) const;
  // Every (node, slot) reading `value`, in node order; empty when nothing reads it.
  const std::vector<GraphUse>& Consumers(const std::string& value) const;
  // The index of the one node reading `value`, or -1 when none or several do.
  int OnlyConsumer(const std::string& value) const;

 private:
  std::vector<GraphNode> nodes_;
  GraphSignature signature_;
  std::vector<std::string> inputs_, outputs_;
  std::map<std::string, int> producer_;
  std::map<std::string, std::vector<GraphUse>> consumers_;
};

// A format payload holding a graph (core/model.h's FormatPayload): its view, built on first
// use and again after each edit, and the edits the format implements.
class GraphPayload : public FormatPayload {
 public:
  const GraphView& view() const { return *shared_view(); }
  // The view, for holders that outlive later edits (an interpreter): edits build a new one.
  std::shared_ptr<const GraphView> shared_view() const;

  virtual absl::Status SetNodeAttribute(const std::string& node, const std::string& attr, int64_t value) = 0;
  virtual absl::Status DropValueInfo(const std::vector<std::string>& values) = 0;
  // See BypassGraphValues; `model` is the model holding this payload.
  virtual absl::StatusOr<std::vector<std::string>> Bypass(
      Model& model, const std::map<std::string, std::string>& bypass) = 0;

 protected:
  virtual GraphView BuildView() const = 0;
  void ViewChanged() { view_.reset(); }

 private:
  mutable std::shared_ptr<const GraphView> view_;
};

// The graph of a model that has one (ONNX); null for checkpoints.
const GraphView* ModelGraph(const Model& model);
std::shared_ptr<const GraphView> SharedModelGraph(const Model& model);

// Typed edits. Each copies the graph first when another Model shares it (a scorer's trial
// copy, say), so the edit changes `model` only.
//
// Sets the integer attribute `attr` of the node `node` (GraphNode::DisplayName), e.g. a
// depthwise Conv's group after its channels were pruned.
absl::Status SetGraphNodeAttribute(Model& model, const std::string& node, const std::string& attr,
                                   int64_t value);
// Drops the shape hints the graph keeps for `values` (after a pass changed their shapes).
absl::Status DropGraphValueInfo(Model& model, const std::vector<std::string>& values);
// Rewires the graph so that every reader of value `from` reads `to` instead (for each pair
// of `bypass`; a graph output named `from` becomes an Identity of `to`), then deletes the
// nodes nothing reads any more, and the constants, store tensors and shape hints only they
// used, and re-derives the layer roles. Returns the removed store tensors' names, sorted.
absl::StatusOr<std::vector<std::string>> BypassGraphValues(Model& model,
                                                           const std::map<std::string, std::string>& bypass);

}  // namespace compress
