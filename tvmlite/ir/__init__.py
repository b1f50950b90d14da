# graph first: tvmlite.ir.model (through tvmlite.ir.clone) imports tvmlite.ir.graph, which re-exports Model
from tvmlite.ir.graph import Graph, Model, Node, Value, tensor_type, type_elem, type_shape  # noqa: F401
