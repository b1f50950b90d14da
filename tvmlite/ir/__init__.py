from tvmlite.ir.graph import Graph, Model, Node, Value, tensor_type, type_elem, type_shape  # noqa: F401
