"""Is a generated 3-D molecule a molecule? The stability analysis of Hoogeboom et al. 2022 (EDM, §5, QM9:
bonds from interatomic distances, an atom is stable when its bonds add up to its valence), RDKit
validity and uniqueness, .xyz files and pictures.

Bonds come from distances alone (EDM's code, qm9/bond_analyze.py, get_bond_order): with the typical
single, double and triple bond lengths l1 >= l2 >= l3 of an element pair (tables below, in pm) and
the margins m = 10, 5, 3 pm, a pair at distance d is bonded with order

    0 if d >= l1 + 10;  else 3 if d < l3 + 3;  else 2 if d < l2 + 5;  else 1

where a pair without a tabulated double (triple) length has no double (triple) bond. The margins
were tuned by EDM's authors to make real QM9 molecules stable. An atom is stable when the sum of its
bond orders is an allowed valence (H 1, C 4, N 3, O 2, F 1); a molecule when all its atoms are. On
real QM9 (with hydrogens) EDM reports 99.0 % of atoms and 95.2 % of molecules stable; this code gives
99.36 % and 95.28 % on all 130,831. The misses are mostly aromatic rings (71 % of the unstable
molecules), whose 1.39-1.40 A C-C bonds fall just past the double-bond cut (134 + 5 pm): benzene
itself counts as unstable, and RDKit reads it as cyclohexane.

    report = stability(molecules)                # {"atom_stability": 0.99, "molecule_stability": 0.95, ...}
    quality = validity_uniqueness(molecules)     # RDKit: {"validity": ..., "uniqueness": ..., "valid": n}
    render_molecules(molecules[:16], "molecules.png")
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unnoise.data.molecules import Molecule
from unnoise.files import write_text_atomic

# Typical covalent bond lengths in pm, as EDM's qm9/bond_analyze.py tabulates them (from the tables of
# wiredchemist.com "Bond energies and lengths" and chemistry-reference.com "Bond Lengths and
# Enthalpies"); each pair listed once, the table is symmetric.
SINGLE_BOND_PM = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92, "Si": 148, "P": 144, "S": 134, "Cl": 127, "Br": 141,
          "I": 161},
    "C": {"C": 154, "N": 147, "O": 143, "F": 135, "Si": 185, "P": 184, "S": 182, "Cl": 177, "Br": 194, "I": 214},
    "N": {"N": 145, "O": 140, "F": 136, "P": 177, "S": 168, "Cl": 175, "Br": 214, "I": 222},
    "O": {"O": 148, "F": 142, "Si": 163, "P": 163, "S": 151, "Cl": 164, "Br": 172, "I": 194},
    "F": {"F": 142, "Si": 160, "P": 156, "S": 158, "Cl": 166, "Br": 178, "I": 187},
    "Si": {"Si": 233, "S": 200, "Cl": 202, "Br": 215, "I": 243},
    "P": {"P": 221, "S": 210, "Cl": 203, "Br": 222},
    "S": {"S": 204, "Cl": 207, "Br": 225, "I": 234},
    "Cl": {"Cl": 199, "Br": 214},
    "Br": {"Br": 228},
    "I": {"I": 266},
}
DOUBLE_BOND_PM = {"C": {"C": 134, "N": 129, "O": 120, "S": 160}, "N": {"N": 125, "O": 121},
                  "O": {"O": 121, "P": 150}, "P": {"S": 186}}
TRIPLE_BOND_PM = {"C": {"C": 120, "N": 116, "O": 113}, "N": {"N": 110}}
MARGINS_PM = (10, 5, 3)  # added to the single, double and triple lengths (EDM's margin1, margin2, margin3)
# Allowed sums of bond orders, EDM's allowed_bonds (sulfur at 4 only, as there).
VALENCES = {"H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "Si": (4,), "P": (3, 5), "S": (4,),
            "Cl": (1,), "Br": (1,), "I": (1,)}
BOND_ELEMENTS = tuple(VALENCES)
# Pictures: Jmol's CPK colours and the covalent radii of Cordero et al. 2008 (Dalton Trans., Table 2), A.
CPK_COLOURS = {"H": "#FFFFFF", "C": "#404040", "N": "#3050F8", "O": "#FF0D0D", "F": "#90E050", "Si": "#F0C8A0",
               "P": "#FF8000", "S": "#FFFF30", "Cl": "#1FF01F", "Br": "#A62929", "I": "#940094"}
COVALENT_RADII = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57, "Si": 1.11, "P": 1.07, "S": 1.05,
                  "Cl": 1.02, "Br": 1.20, "I": 1.39}


def _cut_table(lengths: dict[str, dict[str, int]], margin: int) -> np.ndarray:
    """(E, E) distance cuts in pm (length + margin) over BOND_ELEMENTS; 0 (never bonded) where untabulated."""
    cuts = np.zeros((len(BOND_ELEMENTS),) * 2)
    for a, row in lengths.items():
        for b, length in row.items():
            i, j = BOND_ELEMENTS.index(a), BOND_ELEMENTS.index(b)
            cuts[i, j] = cuts[j, i] = length + margin
    return cuts


_CUTS = np.stack([_cut_table(t, m) for t, m in zip((SINGLE_BOND_PM, DOUBLE_BOND_PM, TRIPLE_BOND_PM), MARGINS_PM)])


def _kinds(symbols: Sequence[str]) -> np.ndarray:
    unknown = sorted(set(symbols) - set(BOND_ELEMENTS))
    if unknown:
        raise ValueError(f"no bond lengths for element(s) {', '.join(unknown)}; known: {', '.join(BOND_ELEMENTS)}")
    return np.array([BOND_ELEMENTS.index(s) for s in symbols], dtype=np.int64)


def bond_orders(molecule: Molecule) -> np.ndarray:
    """(n, n) int symmetric matrix of bond orders 0..3 from the interatomic distances (EDM's rule, above)."""
    k = _kinds(molecule.symbols)
    pos = molecule.positions
    d = 100 * np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)  # (n, n) pm
    np.fill_diagonal(d, np.inf)
    single, double, triple = (d < cut[k[:, None], k[None, :]] for cut in _CUTS)  # each (n, n) bool
    return single.astype(np.int64) + (single & double) + (single & double & triple)


def bond_order(a: str, b: str, distance: float) -> int:
    """The bond order 0..3 of elements a and b at `distance` Angstrom apart."""
    return int(bond_orders(Molecule((a, b), np.array([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])))[0, 1])


def stable_atoms(molecule: Molecule) -> np.ndarray:
    """(n,) bool: whether each atom's bond orders add up to an allowed valence."""
    total = bond_orders(molecule).sum(1)
    return np.array([int(t) in VALENCES[s] for s, t in zip(molecule.symbols, total)], dtype=bool)


def stability(molecules: Sequence[Molecule]) -> dict:
    """EDM's stability: the share of stable atoms over all atoms, and of molecules whose atoms all are (a
    molecule without atoms is not stable)."""
    if not molecules:
        raise ValueError("stability needs at least one molecule, got none")
    stable = [stable_atoms(m) for m in molecules]
    atoms = sum(len(s) for s in stable)
    return {"atom_stability": sum(int(s.sum()) for s in stable) / max(atoms, 1),
            "molecule_stability": sum(len(s) > 0 and bool(s.all()) for s in stable) / len(molecules),
            "atoms": atoms, "molecules": len(molecules)}


def _chem():
    """RDKit's Chem module, imported on first use, with its per-molecule error log silenced (failures are
    counted, not printed)."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise ValueError("RDKit validity needs rdkit: pip install rdkit") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def rdkit_molecule(molecule: Molecule):
    """An unsanitized RDKit RWMol: the atoms, and single/double/triple bonds from `bond_orders` (as EDM's
    build_molecule in qm9/rdkit_functions.py)."""
    chem = _chem()
    kinds = {1: chem.BondType.SINGLE, 2: chem.BondType.DOUBLE, 3: chem.BondType.TRIPLE}
    mol = chem.RWMol()
    for symbol in molecule.symbols:
        mol.AddAtom(chem.Atom(symbol))
    orders = bond_orders(molecule)
    for i, j in zip(*np.nonzero(np.triu(orders))):
        mol.AddBond(int(i), int(j), kinds[int(orders[i, j])])
    return mol


def canonical_smiles(molecule: Molecule) -> str | None:
    """The canonical SMILES (hydrogens implicit) of the largest fragment, or None when RDKit cannot
    sanitize the molecule (an atom with more bonds than its valence allows). Atoms with fewer bonds than
    their valence get implicit hydrogens, as in EDM's validity. A molecule without atoms is invalid."""
    chem = _chem()
    if len(molecule) == 0:
        return None
    mol = rdkit_molecule(molecule)
    try:
        chem.SanitizeMol(mol)
    except ValueError:  # RDKit's sanitization errors derive from ValueError
        return None
    largest = max(chem.GetMolFrags(mol, asMols=True), key=lambda m: m.GetNumAtoms())
    return chem.MolToSmiles(chem.RemoveHs(largest, sanitize=False))


def validity_uniqueness(molecules: Sequence[Molecule]) -> dict:
    """RDKit validity (the share that sanitizes) and uniqueness (distinct SMILES among the valid ones),
    as EDM's BasicMolecularMetrics; `valid` counts the valid molecules."""
    if not molecules:
        raise ValueError("validity needs at least one molecule, got none")
    valid = [s for s in map(canonical_smiles, molecules) if s is not None]
    return {"validity": len(valid) / len(molecules), "uniqueness": len(set(valid)) / len(valid) if valid else 0.0,
            "valid": len(valid), "molecules": len(molecules)}


def noise_molecules(reference: Sequence[Molecule], n: int, seed: int = 0) -> list[Molecule]:
    """A baseline: n molecules with atom counts drawn from `reference`'s, positions Gaussian with the
    reference's per-coordinate std (about each molecule's centre), elements drawn with the reference's
    frequencies. Their stability is what a model that learnt nothing would score."""
    if n < 1 or not reference:
        raise ValueError(f"noise_molecules needs n >= 1 and reference molecules, got n={n}, {len(reference)}")
    rng = np.random.default_rng(seed)
    counts = rng.choice([len(m) for m in reference], size=n)
    spread = np.concatenate([m.positions - m.positions.mean(0) for m in reference]).std(0)  # (3,)
    frequency = Counter(s for m in reference for s in m.symbols)
    symbols, weights = list(frequency), np.array(list(frequency.values()), dtype=np.float64)
    return [Molecule(tuple(str(s) for s in rng.choice(symbols, size=c, p=weights / weights.sum())),
                     rng.normal(size=(c, 3)) * spread) for c in counts]


def write_xyz(molecules: Sequence[Molecule], path: str | os.PathLike, comments: Sequence[str] | None = None) -> Path:
    """Molecules as one multi-frame .xyz file: per molecule its atom count, a comment line (default: its
    formula), then "El x y z" lines in Angstrom."""
    comments = [m.formula for m in molecules] if comments is None else list(comments)
    if len(comments) != len(molecules) or any("\n" in c for c in comments):
        raise ValueError(f"comments must be {len(molecules)} single lines, one per molecule")
    lines = []
    for molecule, comment in zip(molecules, comments):
        lines += [str(len(molecule)), comment]
        lines += [f"{s:<2} {x:14.8f} {y:14.8f} {z:14.8f}" for s, (x, y, z) in zip(molecule.symbols, molecule.positions)]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def read_xyz(path: str | os.PathLike) -> list[Molecule]:
    """The molecules of a (multi-frame) .xyz file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    molecules, at = [], 0
    while at < len(lines):
        if not lines[at].strip():
            at += 1
            continue
        try:
            count = int(lines[at])
            rows = [line.split() for line in lines[at + 2:at + 2 + count]]
            if len(rows) != count or min((len(r) for r in rows), default=4) < 4:
                raise ValueError
            molecule = Molecule(tuple(r[0] for r in rows), np.array([[float(v) for v in r[1:4]] for r in rows]))
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {at + 1} does not start a frame of 'count, comment, El x y z' lines"
                             ) from None
        molecules.append(molecule)
        at += 2 + count
    return molecules


def _draw_molecule(ax, molecule: Molecule, span: float) -> None:
    """One molecule on `ax`, turned to its principal axes (the flattest one points at the viewer) and painted
    back to front: discs for atoms, a line per bond order, each at the depth of its middle."""
    import matplotlib.patches

    if len(molecule) == 0:
        return
    pos = molecule.positions - molecule.positions.mean(0)
    if len(pos) > 1:
        pos = pos @ np.linalg.svd(pos, full_matrices=False)[2].T  # (n, 3) coordinates along the principal axes
    pos = np.pad(pos, ((0, 0), (0, 3 - pos.shape[1])))
    orders = bond_orders(molecule) if set(molecule.symbols) <= set(BOND_ELEMENTS) else np.zeros((len(pos),) * 2)
    depth = 1 + (pos[:, 2] - pos[:, 2].min()) / (np.ptp(pos[:, 2]) + 1e-9)  # zorder in [1, 2]: labels stay on top
    for i, j in zip(*np.nonzero(np.triu(orders))):
        a, b = pos[i, :2], pos[j, :2]
        normal = np.array([a[1] - b[1], b[0] - a[0]]) / max(np.linalg.norm(a - b), 1e-9)
        for k in range(int(orders[i, j])):
            offset = normal * 0.09 * (k - (orders[i, j] - 1) / 2)
            ax.plot(*np.stack([a + offset, b + offset]).T, color="#555555", lw=1.2,
                    zorder=(depth[i] + depth[j]) / 2)
    for (x, y), z, symbol in zip(pos[:, :2], depth, molecule.symbols):
        radius = 0.1 + 0.45 * COVALENT_RADII.get(symbol, 0.8)
        ax.add_patch(matplotlib.patches.Circle((x, y), radius, facecolor=CPK_COLOURS.get(symbol, "#FF1493"),
                                               edgecolor="black", lw=0.6, zorder=z + 0.01))
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)


def render_molecules(molecules: Sequence[Molecule], path: str | os.PathLike, columns: int | None = None,
                     metadata: dict[str, str] | None = None) -> Path:
    """A PNG grid of molecules (2 x 2 inch panels at 120 dpi, the same scale in all), each turned to face
    the viewer with its broad side and labelled with its formula; metadata: PNG text chunks."""
    if not molecules:
        raise ValueError("render_molecules needs at least one molecule, got none")
    from unnoise import plots  # headless matplotlib (Agg) and the PNG writer of every figure

    columns = columns or math.ceil(math.sqrt(len(molecules)))
    rows = math.ceil(len(molecules) / columns)
    span = 0.6 + max([1.0] + [float(np.linalg.norm(m.positions - m.positions.mean(0), axis=1).max())
                              for m in molecules if len(m)])
    fig, axes = plots.plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows), squeeze=False)
    fig.subplots_adjust(0, 0, 1, 1, 0, 0)
    for k, ax in enumerate(axes.flat):
        ax.set(xticks=[], yticks=[], aspect="equal", xlim=(-span, span), ylim=(-span, span))
        for spine in ax.spines.values():
            spine.set_color("#CCCCCC")
        if k < len(molecules):
            _draw_molecule(ax, molecules[k], span)
            ax.text(0.04, 0.96, molecules[k].formula, transform=ax.transAxes, va="top", fontsize=8, zorder=3)
    return plots._save(fig, path, metadata)
