"""The Graph's rewrites that are built on its links: replace all uses of a value, rename a value, swap a
node for a small subgraph, drop unused values.

A mixin of Graph (tvmlite.ir.graph): these only call the Graph's own linking methods (add_node,
remove_node, set_inputs, subgraph_changed), so producers, consumers, edges and output names stay
consistent without touching networkx here."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tvmlite.errors import TvmliteError

if TYPE_CHECKING:
    from tvmlite.ir.graph import Node


class GraphEdits:
    """Rewrites of a Graph; mixed into Graph, never used alone."""

    def replace_all_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` read ``new`` instead, keeping the graph's output names.

        When ``old`` is a graph output, ``new`` takes over its name (or an Identity is inserted when
        ``new`` is an input, initializer or another output, which cannot be renamed).
        """
        if old == new:
            return
        self._redirect_readers(old, new)
        if old in self.outputs:
            positions = [i for i, n in enumerate(self.outputs) if n == old]
            renamable = (new in self.values and self.values[new].producer is not None
                         and new not in self.outputs)
            dead = self.fresh_name(old + "_replaced")
            self.rename_value(old, dead)
            if renamable:
                declared = self.values[dead]
                self.rename_value(new, old)
                v = self.values[old]
                if declared.type is not None:  # the output keeps the type it was declared with
                    v.type = declared.type
                v.doc_string = v.doc_string or declared.doc_string
                v.metadata = v.metadata or declared.metadata
            else:
                self.add_node("Identity", [new], [old], name=self.fresh_name(old + "_identity"))
            for i in positions:  # the output keeps its name, now produced by `new`'s producer
                self.outputs[i] = old

    def _redirect_readers(self, old: str, new: str) -> None:
        """Every reader of ``old`` reads ``new``: its inputs, and the outer references of its
        subgraphs (If/Loop/Scan bodies) that name ``old``."""
        for node in self.consumers(old):
            self.set_inputs(node, [new if n == old else n for n in node.inputs])
            if old in node.implicit_inputs:
                for sg in node.subgraphs:
                    sg._rename_outer(old, new)
                self.subgraph_changed(node)

    def _rename_outer(self, old: str, new: str) -> None:
        """Rename an outer-scope reference inside this subgraph (and deeper)."""
        if old in self.values:
            return  # shadowed here
        for node in list(self.nx.nodes):
            if old in node.inputs:
                self.set_inputs(node, [new if n == old else n for n in node.inputs])
            if old in node.implicit_inputs:
                for sg in node.subgraphs:
                    sg._rename_outer(old, new)
                self.subgraph_changed(node)
        self.outputs = [new if n == old else n for n in self.outputs]

    def rename_value(self, old: str, new: str) -> None:
        """Give value ``old`` the name ``new`` everywhere it appears."""
        if old == new:
            return
        if self._name_taken(new):
            raise TvmliteError(f"cannot rename {old!r}: {new!r} is already a value")
        v = self.values.pop(old)
        v.name = new
        self.values[new] = v
        p = v.producer
        if p is not None:
            p._outputs = tuple(new if n == old else n for n in p.outputs)
        self._redirect_readers(old, new)
        for lst in (self.inputs, self.outputs, self.initializers, self.value_info_order):
            for i, n in enumerate(lst):
                if n == old:
                    lst[i] = new

    def produce_instead(self, node: Node, new: str, old: str) -> None:
        """``node`` produces the value ``old`` (which has lost its producer) in place of its output
        ``new``: readers of ``new`` read ``old``, ``new`` is gone, and ``old`` keeps its place among
        the graph outputs and value_info (and its declared type, or takes ``new``'s). The node stays
        the same object, so nothing that holds it (a builder's list, a report) goes stale."""
        vo, vn = self.values.get(old), self.values.get(new)
        if vo is None or vn is None or vn.producer is not node:
            raise TvmliteError(f"{node.label!r} does not produce {new!r}, or {old!r} is not a value")
        if vo.producer is not None or vo.is_initializer or old in self.inputs:
            raise TvmliteError(f"cannot produce {old!r} with {node.label!r}: it already has a source")
        if new in self.outputs:
            raise TvmliteError(f"cannot retire {new!r}: it is a graph output")
        self._redirect_readers(new, old)
        node._outputs = tuple(old if n == new else n for n in node.outputs)
        del self.values[new]
        vo.producer = node
        if vo.type is None:
            vo.type = vn.type
        for reader in self._consumers.get(old, ()):
            self.nx.add_edge(node, reader)
        self._version += 1

    def replace_node_with(self, node: Node, new_nodes: list[tuple], *, outputs: list[str]) -> list[Node]:
        """Swap ``node`` for a small subgraph.

        ``new_nodes`` is a list of ``(op_type, inputs, outputs, attrs)`` or ``(…, {"domain": d})``
        tuples in execution order, whose output names are fresh; ``outputs[i]`` names the value that
        takes the place of ``node.outputs[i]``. The old outputs keep their names (so graph outputs and
        value_info stay put) and are produced by the new subgraph.
        """
        if len(outputs) != len(node.outputs):
            raise TvmliteError(f"replacement of {node.label!r} gives {len(outputs)} outputs, "
                               f"node has {len(node.outputs)}")
        order = node.order
        self.remove_node(node, remove_outputs=False)
        rename = {new: old for old, new in zip(node.outputs, outputs) if old and new != old}
        created = []
        for i, spec in enumerate(new_nodes):
            op_type, ins, outs, attrs = spec[:4]
            extra = spec[4] if len(spec) > 4 else {}
            outs = [rename.get(o, o) for o in outs]
            ins = [rename.get(n, n) for n in ins]
            created.append(self.add_node(op_type, ins, outs, attrs,
                                         order=order - 1 + (i + 1) / (len(new_nodes) + 1), **extra))
        for old, new in zip(node.outputs, outputs):
            if old and new != old and new not in rename:
                raise TvmliteError(f"replacement output {new!r} is not produced by the new nodes")
        for old in node.outputs:
            if old and self.values.get(old) is not None and self.values[old].producer is None \
                    and not self.values[old].is_initializer:
                raise TvmliteError(f"replacement of {node.label!r} does not produce {old!r}")
        return created

    def remove_unused_values(self) -> int:
        """Drop values nothing produces, reads or lists (e.g. initializers left by a rewrite)."""
        keep = set(self.inputs) | set(self.outputs)
        dead = [n for n, v in self.values.items()
                if v.producer is None and n not in keep and not self._consumers.get(n)]
        for n in dead:
            del self.values[n]
        if dead:
            dead_set = set(dead)
            self.initializers = [n for n in self.initializers if n not in dead_set]
            self.value_info_order = [n for n in self.value_info_order if n not in dead_set]
        return len(dead)

