"""The documents of a YAML text, with what its aliases may cost bounded.

An alias (`*name`) re-uses the node its anchor (`&name`) marks, so PyYAML builds
the object once and shares it: a 29 KB file can stand for millions of values
(an anchor on 1,000 addresses used by 1,000 endpoints), and everything that walks
the objects afterwards walks every one. Each document is composed into nodes
first and the nodes its aliases re-use are counted, the whole subtree each time
(an alias of an alias counts all it stands for); a file whose aliases add more
than `ALIAS_BUDGET` nodes, or one that refers to a node from inside itself (a
structure without end), is refused before any of its objects are built. go-yaml
refuses excessive aliasing for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Nodes the aliases of one file may add: far above what anchors shared between
# a few objects (labels, ports) add, far below what takes long to decode.
ALIAS_BUDGET = 100_000
# Sizes stop growing here: an anchor nested in anchors can stand for 2**n nodes.
_SATURATED = 1 << 62


class AliasError(Exception):
    """A document whose aliases stand for too much, or for a structure without end."""


def documents(text: str) -> Iterator[object]:
    """The documents of `text`; raises yaml.YAMLError, AliasError, or what PyYAML's
    constructors raise for a value they cannot build (ValueError for 2024-02-30)."""
    loader = _Loader(text)
    # No `*` anywhere: no alias, nothing to count.
    count = "*" in text
    reused = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if count and node is not None:
                reused += reused_nodes(node)
                if reused > ALIAS_BUDGET:
                    raise AliasError(
                        f"YAML aliases repeat more than {ALIAS_BUDGET:,} nodes in this file,"
                        " too many to decode: anchors re-used that often are refused"
                    )
            yield loader.construct_document(node)
    finally:
        loader.dispose()


def reused_nodes(root: yaml.Node) -> int:
    """How many nodes the aliases under `root` add: the size of the tree the document
    stands for, less the nodes it holds. Raises AliasError for a node that contains
    an alias of itself."""
    sizes: dict[int, int] = {}
    path: set[int] = set()  # the nodes whose subtree is being counted
    stack: list[tuple[yaml.Node, list[yaml.Node] | None]] = [(root, None)]
    while stack:
        node, children = stack.pop()
        key = id(node)
        if children is not None:  # all of them counted now
            path.discard(key)
            sizes[key] = min(1 + sum(sizes[id(child)] for child in children), _SATURATED)
            continue
        if key in sizes:
            continue
        if key in path:
            raise AliasError("a YAML alias refers to a node that holds it: a structure without end")
        children = _children(node)
        path.add(key)
        stack.append((node, children))
        for child in children:
            if isinstance(child, yaml.ScalarNode):
                sizes[id(child)] = 1  # a leaf: nothing under it to count
            else:
                stack.append((child, None))
    return sizes[id(root)] - len(sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
