"""Class hierarchies (trees over the classes) for the secondary-information metrics.

Dist^C and Dist^S (docs/method.md, "Measuring secondary information") need, for C classes:

- a tree distance ``d(y, c)``: the number of edges from the true class ``y`` up to the
  lowest common ancestor of ``y`` and ``c`` (:meth:`Hierarchy.distance_matrix`); in a
  two-level hierarchy (class -> coarse node -> root) it is 1 for siblings and 2 otherwise.
  On a deeper or unbalanced tree it is asymmetric: ``d(y, c) != d(c, y)`` when ``y`` and
  ``c`` sit at different depths;
- a coarse group per class for Dist^C (:meth:`Hierarchy.coarse_of_fine`).

A hierarchy comes from coarse labels (:meth:`Hierarchy.from_coarse`), from a user's JSON
file (:meth:`Hierarchy.from_json`) or, for ImageNet-style WordNet ids, from WordNet 3.0
(:func:`wordnet_hierarchy`), read from the ``data.noun`` file of Debian's ``wordnet-base``
package (``/usr/share/wordnet/data.noun``) or of NLTK's ``wordnet`` corpus.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from kdgen.errors import DataError

VIRTUAL_ROOT = "<root>"
"""The node name given to the common root added above a forest's roots."""

WORDNET_COARSE_DEPTH = 5
"""Default depth of the Dist^C groups on WordNet (``entity.n.01`` has depth 0).

Along first-hypernym paths, depth 5 cuts ImageNet-1k's 1000 classes into 34 groups, the
largest ``organism`` (410 classes), ``instrumentality`` (347), ``covering`` (90),
``structure`` (55), ``produce`` (23): a few dozen groups, as coarse as the tree's
imbalance allows at a fixed depth (depth 6 gives 83 groups, depth 4 only 15). A class
no deeper than the cut is its own group. Pass ``coarse_depth`` to cut elsewhere.
"""

DEBIAN_DATA_NOUN = Path("/usr/share/wordnet/data.noun")
"""Where Debian's ``wordnet-base`` package installs WordNet 3.0's noun data file."""

_WNID = re.compile(r"n\d{8}")


class Hierarchy:
    """A tree over the classes: ``parents`` maps each node to its parent (None: a root).

    Nodes are strings. Every class name must be a node; a parent that is not itself a
    key is a root. Several roots (a forest) get the common root :data:`VIRTUAL_ROOT`.
    ``coarse_depth`` chooses the Dist^C groups: each class's ancestor at that depth
    (root = depth 0; a class no deeper than the cut is its own group); ``None`` (the
    default) groups the classes by their parent. ``labels`` optionally gives readable
    names of nodes (WordNet lemmas, for instance).
    """

    def __init__(
        self,
        parents: Mapping[str, str | None],
        class_names: list[str],
        coarse_depth: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if coarse_depth is not None and coarse_depth < 1:
            raise DataError(f"coarse_depth={coarse_depth} must be at least 1 (the root is 0)")
        self.class_names = list(class_names)
        self.coarse_depth = coarse_depth
        self.labels = dict(labels or {})
        self.parents = _normalise_parents(parents)
        _check_classes(self.parents, self.class_names)
        _check_acyclic(self.parents)
        self.parents = _add_virtual_root(self.parents)
        self._order = {node: i for i, node in enumerate(self.parents)}
        self._paths = {name: self.path(name) for name in self.class_names}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def path(self, node: str) -> list[str]:
        """The nodes from the root down to ``node``, both included."""
        chain = [node]
        while self.parents[chain[-1]] is not None:
            chain.append(self.parents[chain[-1]])
        return chain[::-1]

    def depth(self, node: str) -> int:
        """Edges from the root to ``node``."""
        return len(self.path(node)) - 1

    def distance_matrix(self) -> torch.Tensor:
        """(C, C) float64: entry [y, c] is the number of edges from class y up to the lowest
        common ancestor of y and c (0 on the diagonal; asymmetric in general)."""
        paths = [self._paths[name] for name in self.class_names]
        longest = max(len(p) for p in paths)
        ids = torch.full((len(paths), longest), -1, dtype=torch.long)
        for row, path in enumerate(paths):
            ids[row, : len(path)] = torch.tensor([self._order[n] for n in path])
        common = torch.zeros(len(paths), len(paths), dtype=torch.long)  # shared path nodes
        shared = torch.ones(len(paths), len(paths), dtype=torch.bool)
        for level in range(longest):
            column = ids[:, level]
            shared &= (column[:, None] == column[None, :]) & (column[:, None] >= 0)
            common += shared
        depth = torch.tensor([len(p) - 1 for p in paths], dtype=torch.long)
        return (depth[:, None] - (common - 1)).double()

    def _coarse_node(self, name: str) -> str:
        path = self._paths[name]
        if self.coarse_depth is None:
            return path[-2] if len(path) > 1 else path[-1]
        return path[min(self.coarse_depth, len(path) - 1)]

    def _coarse_nodes(self) -> list[str]:
        nodes = {self._coarse_node(name) for name in self.class_names}
        return sorted(nodes, key=self._order.__getitem__)

    @property
    def coarse_names(self) -> list[str]:
        """The Dist^C groups' nodes, indexed as :meth:`coarse_of_fine` numbers them (in the
        order the nodes first appear in ``parents``)."""
        return self._coarse_nodes()

    def coarse_of_fine(self) -> torch.Tensor:
        """(C,) int64: the index in :attr:`coarse_names` of each class's coarse group."""
        index = {node: i for i, node in enumerate(self._coarse_nodes())}
        groups = [index[self._coarse_node(name)] for name in self.class_names]
        return torch.tensor(groups, dtype=torch.int64)

    @classmethod
    def from_coarse(
        cls,
        coarse_of_fine: list[int],
        class_names: list[str],
        coarse_names: list[str] | None = None,
    ) -> Hierarchy:
        """A two-level hierarchy: class -> coarse node -> one root. Coarse labels no class
        uses are left out of :attr:`coarse_names`."""
        if len(coarse_of_fine) != len(class_names):
            raise DataError(
                f"coarse_of_fine has {len(coarse_of_fine)} entries for {len(class_names)} classes"
            )
        count = max(coarse_of_fine, default=-1) + 1
        if coarse_names is None:
            coarse_names = [f"coarse:{i}" for i in range(count)]
        if min(coarse_of_fine, default=0) < 0 or count > len(coarse_names):
            raise DataError(
                f"coarse labels must lie in [0, {len(coarse_names) - 1}], "
                f"found [{min(coarse_of_fine)}, {count - 1}]"
            )
        clash = set(coarse_names) & set(class_names)
        if clash:
            raise DataError(f"coarse names {sorted(clash)} are also class names; rename them")
        parents: dict[str, str | None] = dict.fromkeys(coarse_names, VIRTUAL_ROOT)
        parents[VIRTUAL_ROOT] = None
        for name, group in zip(class_names, coarse_of_fine, strict=True):
            parents[name] = coarse_names[group]
        return cls(parents, class_names)

    @classmethod
    def from_json(
        cls, path: str | Path, class_names: list[str], coarse_depth: int | None = None
    ) -> Hierarchy:
        """Read a JSON object mapping each node to its parent (a string, or null for a
        root). Each class must be a key. Its parents may have parents of their own (a tree),
        or none (the parents are then coarse labels: a two-level hierarchy). A class mapped
        to its own name (``"bag": "bag"``) has a coarse label of that name: a node of its
        own (see :func:`_separate_coarse_twins`), not a cycle."""
        parents, labels = _separate_coarse_twins(_read_json_parents(Path(path)), class_names)
        missing = [name for name in class_names if name not in parents]
        if missing:
            raise DataError(
                f"{path}: no parent given for {len(missing)} class(es): {_few(missing)}; "
                'add a \'"class": "parent"\' entry for each'
            )
        try:
            hierarchy = cls(parents, class_names, coarse_depth, labels)
        except DataError as error:
            raise DataError(f"{path}: {error}") from None
        unknown = _unused_nodes(hierarchy, parents)
        if unknown:
            raise DataError(
                f"{path}: entries for unknown classes: {_few(unknown)} (neither a class of the "
                "data set nor an ancestor of one); fix or remove them"
            )
        return hierarchy


COARSE_TWIN_SUFFIX = " (coarse)"
"""Appended to the node name of a coarse label that has a class's name."""


def _separate_coarse_twins(
    parents: dict[str, str | None], class_names: list[str]
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Parents in which each class mapped to itself (``"bag": "bag"``, a class whose coarse
    label has its name) hangs from a node of its own, ``"bag (coarse)"``, as does every
    entry that names ``"bag"`` as its parent; and the readable labels of those nodes."""
    twins = [name for name in class_names if parents.get(name) == name]
    renamed: dict[str, str] = {}
    for name in twins:
        node = name + COARSE_TWIN_SUFFIX
        while node in parents or node in renamed.values():
            node += COARSE_TWIN_SUFFIX
        renamed[name] = node
    separated = {
        node: renamed.get(parent, parent) if isinstance(parent, str) else parent
        for node, parent in parents.items()
    }
    return separated, {node: name for name, node in renamed.items()}


def _normalise_parents(parents: Mapping[str, str | None]) -> dict[str, str | None]:
    """Check node types and make every parent a node (a parent with no entry is a root)."""
    result: dict[str, str | None] = {}
    for node, parent in parents.items():
        if not isinstance(node, str) or not (parent is None or isinstance(parent, str)):
            raise DataError(
                f"hierarchy entry {node!r}: {parent!r} must map a string to a string or null"
            )
        result[node] = parent
    for parent in list(result.values()):
        if parent is not None and parent not in result:
            result[parent] = None
    return result


def _check_classes(parents: dict[str, str | None], class_names: list[str]) -> None:
    if len(set(class_names)) != len(class_names):
        raise DataError("class names must be unique")
    missing = [name for name in class_names if name not in parents]
    if missing:
        raise DataError(f"hierarchy lacks {len(missing)} class(es): {_few(missing)}; add them")


def _check_acyclic(parents: dict[str, str | None]) -> None:
    done: set[str] = set()
    for start in parents:
        seen: list[str] = []
        node: str | None = start
        while node is not None and node not in done:
            if node in seen:
                cycle = [*seen[seen.index(node) :], node]
                raise DataError(
                    f"hierarchy has a cycle: {' -> '.join(cycle)}; a tree needs every chain of "
                    "parents to end at a root (null)"
                )
            seen.append(node)
            node = parents[node]
        done.update(seen)


def _add_virtual_root(parents: dict[str, str | None]) -> dict[str, str | None]:
    roots = [node for node, parent in parents.items() if parent is None]
    if len(roots) == 1:
        return parents
    if VIRTUAL_ROOT in parents:
        raise DataError(f"the node name {VIRTUAL_ROOT!r} is reserved; rename it")
    result = {
        node: (VIRTUAL_ROOT if parent is None else parent) for node, parent in parents.items()
    }
    result[VIRTUAL_ROOT] = None
    return result


def _read_json_parents(path: Path) -> dict[str, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"hierarchy file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"hierarchy file {path} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: must hold one JSON object mapping each class to its parent")
    return data


def _unused_nodes(hierarchy: Hierarchy, parents: Mapping[str, str | None]) -> list[str]:
    used = {node for name in hierarchy.class_names for node in hierarchy.path(name)}
    return [node for node in parents if node not in used]


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# WordNet -------------------------------------------------------------------------------


def looks_like_wnids(names: Iterable[str]) -> bool:
    """True when every name is a WordNet noun id such as ``n01440764``."""
    names = list(names)
    return bool(names) and all(_WNID.fullmatch(name) for name in names)


def _nltk_data_dirs() -> list[Path]:
    """NLTK's data folders, without importing NLTK when it is absent."""
    try:
        import nltk.data

        dirs = [Path(p) for p in nltk.data.path]
    except ImportError:
        env = [Path(p) for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
        dirs = [*env, Path.home() / "nltk_data", Path("/usr/share/nltk_data")]
        dirs += [Path("/usr/local/share/nltk_data"), Path("/usr/lib/nltk_data")]
    return dirs


def load_data_noun(path: str | Path | None = None) -> bytes | None:
    """The bytes of WordNet 3.0's ``data.noun``: from ``path`` when given, else from
    ``$KDGEN_WORDNET_DATA_NOUN``, Debian's ``wordnet-base`` or NLTK's ``wordnet`` corpus
    (unpacked or zipped); None when none is found."""
    if path is not None:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise DataError(f"cannot read WordNet data file {path} ({error})") from None
    env = os.environ.get("KDGEN_WORDNET_DATA_NOUN")
    candidates = ([Path(env)] if env else []) + [DEBIAN_DATA_NOUN]
    for folder in _nltk_data_dirs():
        candidates.append(folder / "corpora" / "wordnet" / "data.noun")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_bytes()
    for folder in _nltk_data_dirs():
        archive = folder / "corpora" / "wordnet.zip"
        if archive.is_file():
            with zipfile.ZipFile(archive) as zipped:
                return zipped.read("wordnet/data.noun")
    return None


def parse_data_noun_line(line: str) -> tuple[str, str, str | None]:
    """``(wnid, lemma, first hypernym's wnid or None)`` of one ``data.noun`` line.

    The format (``wndb(5)``): ``offset lex_filenum ss_type w_cnt [word lex_id]...
    p_cnt [symbol offset pos source/target]... | gloss``, with ``w_cnt`` in hexadecimal.
    The hypernym is the first ``@`` (hypernym) pointer to a noun, else the first ``@i``
    (instance hypernym): WordNet lists a synset's principal hypernym first.
    """
    fields = line.split(" | ", 1)[0].split()
    try:
        words = int(fields[3], 16)
        start = 4 + 2 * words
        count = int(fields[start])
        pointers = [fields[start + 1 + 4 * i : start + 5 + 4 * i] for i in range(count)]
        lemma = fields[4]
    except (IndexError, ValueError):
        raise DataError(f"malformed WordNet data.noun line: {line[:80]!r}") from None
    for symbol in ("@", "@i"):
        for pointer in pointers:
            if len(pointer) == 4 and pointer[0] == symbol and pointer[2] == "n":
                return "n" + fields[0], lemma, "n" + pointer[1]
    return "n" + fields[0], lemma, None


def _find_line(data: bytes, offset: int) -> str | None:
    """The line of synset ``offset``: at byte ``offset`` in a genuine file (WordNet's
    offsets are byte offsets), else wherever a line starts with it."""
    key = b"%08d " % offset
    start = offset if data[offset : offset + len(key)] == key else -1
    if start < 0:
        found = data.find(b"\n" + key)
        start = found + 1 if found >= 0 else (0 if data.startswith(key) else -1)
    if start < 0:
        return None
    end = data.find(b"\n", start)
    return data[start : end if end >= 0 else len(data)].decode("utf-8", "replace")


def wordnet_parents(wnids: list[str], data: bytes) -> tuple[dict[str, str | None], dict[str, str]]:
    """Parents (first hypernym) of ``wnids`` and all their ancestors, and each node's
    lemma, read from the bytes of a ``data.noun`` file."""
    bad = [w for w in wnids if not _WNID.fullmatch(w)]
    if bad:
        raise DataError(f"not WordNet noun ids (n + 8 digits): {_few(bad)}")
    parents: dict[str, str | None] = {}
    labels: dict[str, str] = {}
    unknown: list[str] = []
    for wnid in wnids:
        node: str | None = wnid
        while node is not None and node not in parents:
            line = _find_line(data, int(node[1:]))
            if line is None:
                if node == wnid:
                    unknown.append(wnid)
                    break
                raise DataError(f"WordNet data.noun lacks synset {node}; the file is incomplete")
            _, labels[node], parents[node] = parse_data_noun_line(line)
            node = parents[node]
    if unknown:
        raise DataError(
            f"{len(unknown)} id(s) are not WordNet 3.0 nouns: {_few(unknown)}; "
            "check the class folder names"
        )
    return parents, labels


def wordnet_hierarchy(
    wnids: list[str],
    coarse_depth: int | None = WORDNET_COARSE_DEPTH,
    data_noun: str | Path | None = None,
) -> Hierarchy | None:
    """The WordNet 3.0 hypernym tree over classes named by noun ids (``n01440764``).

    Each synset hangs from its first hypernym (first ``@`` pointer, else ``@i``), so every
    class has one path to ``entity`` (n00001740). Dist^C groups are the ancestors at
    ``coarse_depth`` (default :data:`WORDNET_COARSE_DEPTH`). The data come from
    ``data_noun`` or are looked up by :func:`load_data_noun`; when none is found this
    warns how to install them and returns None. Unknown ids raise :class:`DataError`.
    """
    data = load_data_noun(data_noun)
    if data is None:
        warnings.warn(
            "WordNet 3.0 not found, so Dist^C/Dist^S are skipped for these WordNet classes; "
            "install it with 'apt-get install wordnet-base' (or 'pip install nltk' and "
            "python -c \"import nltk; nltk.download('wordnet')\")",
            stacklevel=2,
        )
        return None
    parents, labels = wordnet_parents(list(wnids), data)
    return Hierarchy(parents, list(wnids), coarse_depth=coarse_depth, labels=labels)
