"""Model: a Graph plus what ONNX keeps around it; its native copy and the explicit restore used by undo."""
from __future__ import annotations

import onnx

from tvmlite.ir.clone import clone_graph, copy_proto
from tvmlite.ir.graph import Graph


class Model:
    """A Graph plus what ONNX keeps around it (opsets, metadata, functions, producer...)."""

    #: every attribute of a Model: copy() copies each, restore() takes each over (a test checks that
    #: this list and __init__ agree, so a new field cannot be forgotten by either)
    FIELDS = ("graph", "opsets", "imported_opsets", "ir_version", "producer_name", "producer_version", "domain",
              "model_version", "doc_string", "metadata", "functions", "training_info", "configuration",
              "external_data")

    def __init__(self, graph: Graph, opsets: dict[str, int] | None = None):
        self.graph = graph
        self.opsets: dict[str, int] = dict(opsets or {"": 17})
        #: the opsets as read: while unchanged, export keeps the file's IR version
        self.imported_opsets: dict[str, int] = dict(self.opsets)
        self.ir_version: int = 8
        self.producer_name = ""
        self.producer_version = ""
        self.domain = ""
        self.model_version = 0
        self.doc_string = ""
        self.metadata: list[tuple[str, str]] = []  # metadata_props in order
        self.functions: list[onnx.FunctionProto] = []  # model-local functions, kept as read
        self.training_info: list = []
        self.configuration: list = []
        #: where external-data tensors came from (name -> location); export writes them external again
        self.external_data: dict[str, str] = {}

    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 1))

    def copy(self) -> Model:
        """A copy whose changes do not reach this model, made natively (tvmlite.ir.clone): the graph is
        rebuilt, initializer arrays are shared read-only (copy-on-write: a pass assigns a new array
        through ``Value.const``), protos are copied."""
        c = Model(clone_graph(self.graph), self.opsets)
        c.imported_opsets = dict(self.imported_opsets)
        c.ir_version = self.ir_version
        c.producer_name, c.producer_version = self.producer_name, self.producer_version
        c.domain, c.model_version, c.doc_string = self.domain, self.model_version, self.doc_string
        c.metadata = list(self.metadata)
        c.functions = [copy_proto(f) for f in self.functions]
        c.training_info = [copy_proto(t) for t in self.training_info]
        c.configuration = [copy_proto(x) for x in self.configuration]
        c.external_data = dict(self.external_data)
        return c

    def restore(self, other: Model) -> None:
        """Make this model the one ``other`` is, in place: it takes over ``other``'s graph and fields
        (nothing is copied). Undo is ``backup = m.copy()`` before a change and ``m.restore(backup)``
        after, for callers that hold ``m``; ``other`` is spent (the two would share one graph)."""
        if other is self:
            return
        for name in self.FIELDS:
            setattr(self, name, getattr(other, name))

    def metadata_dict(self) -> dict[str, str]:
        return dict(self.metadata)
