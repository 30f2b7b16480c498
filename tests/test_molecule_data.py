import importlib.util
import sys

import numpy as np
import pytest
import torch

from unnoise.data.molecules import (
    ELEMENTS,
    HEAVY_ELEMENTS,
    ONEHOT_SCALE,
    Molecule,
    MoleculeSet,
    g2_set,
    parse_qm9,
    qm9,
    qm9_files,
    qm9_split_rows,
    to_molecules,
)

# Atom totals over all of QM9 and molecules by heavy-atom count, counted from qm9pack's CSV files
# independently of this module (Python's csv + ast.literal_eval).
ATOM_TOTALS = {"H": 1_208_486, "C": 831_925, "N": 132_498, "O": 183_265, "F": 3_036}
HEAVY_ATOM_HISTOGRAM = {1: 3, 2: 5, 3: 9, 4: 31, 5: 127, 6: 608, 7: 3138, 8: 17879, 9: 109031}
# The first row of qm9pack's qm9_part1.csv: methane (QM9 index 1), Angstrom.
METHANE = np.array([[-0.0126981359, 1.0858041578, 0.0080009958], [0.002150416, -0.0060313176, 0.0019761204],
                    [1.0117308433, 1.4637511618, 0.0002765748], [-0.540815069, 1.4475266138, -0.8766437152],
                    [-0.5238136345, 1.4379326443, 0.9063972942]])


@pytest.fixture(scope="module")
def everything() -> MoleculeSet:
    return qm9("all")


def test_all_of_qm9_is_read_with_its_elements_and_atom_counts(everything):
    ds = everything
    assert len(ds) == 130_831 and ds.sample_shape == (29, 3 + 5) and ds.values.dtype == torch.float32
    assert ds.modality == "molecule" and ds.name == "qm9" and ds.elements == ELEMENTS == ("H", "C", "N", "O", "F")
    assert bool((ds.labels == -1).all()) and ds.num_classes == 0 and len(ds.smiles) == len(ds.names) == len(ds)
    onehot = ds.values[..., 3:][ds.nodes]  # (atoms, 5)
    assert dict(zip(ELEMENTS, (onehot > 0).sum(0).tolist())) == ATOM_TOTALS
    counts = ds.atom_counts
    assert counts.min() == 3 and counts.max() == 29 and "qm9pack" not in sys.modules
    histogram = ds.atom_count_histogram()
    assert histogram.shape == (30,) and histogram.dtype == torch.float64
    assert torch.allclose(histogram * len(ds), torch.bincount(counts, minlength=30).double())


def test_values_are_centred_positions_then_scaled_one_hots_and_zero_padding(everything):
    ds = everything
    mask = ds.nodes.unsqueeze(-1).float()  # (N, 29, 1)
    centre = (ds.values[..., :3].double() * mask).sum(1) / mask.sum(1)  # (N, 3)
    assert centre.abs().max() < 1e-5
    assert torch.all(ds.values[~ds.nodes] == 0)
    onehot = ds.values[..., 3:][ds.nodes]
    assert torch.all(onehot.sum(1) == ONEHOT_SCALE) and torch.all((onehot > 0).sum(1) == 1)
    assert torch.all(ds.nodes[:, :-1] | ~ds.nodes[:, 1:])  # atoms first, padding after
    methane = ds.names.index("gdb_1")
    assert ds.smiles[methane] == "C" and int(ds.atom_counts[methane]) == 5
    expected = METHANE - METHANE.mean(0)
    assert np.allclose(ds.values[methane, :5, :3].numpy(), expected, atol=2e-7)
    assert to_molecules(ds.values[methane:methane + 1], ds.nodes[methane:methane + 1])[0].symbols == tuple("CHHHH")


def test_splits_are_hoogeboom_et_al_sizes_disjoint_and_cover_everything(everything):
    names = {split: qm9(split).names for split in ("train", "valid", "test")}
    assert [len(v) for v in names.values()] == [100_000, 17_748, 13_083]
    union = set().union(*map(set, names.values()))
    assert len(union) == len(everything) and union == set(everything.names)  # disjoint (sizes add up) and complete
    rows = qm9_split_rows(len(everything), "train")
    assert np.array_equal(rows, np.random.RandomState(0).permutation(len(everything))[:100_000])
    assert qm9("train", seed=1, limit=5).names != qm9("train", limit=5).names
    first = qm9("train", limit=50)
    assert len(first) == 50 and first.names == names["train"][:50]


def test_without_hydrogens_the_heavy_atoms_are_kept_and_recentred():
    ds = qm9("all", hydrogens=False)
    assert ds.elements == HEAVY_ELEMENTS and ds.sample_shape == (9, 3 + 4)
    counts = torch.bincount(ds.atom_counts, minlength=10).tolist()
    assert {k: counts[k] for k in range(1, 10)} == HEAVY_ATOM_HISTOGRAM and counts[0] == 0
    mask = ds.nodes.unsqueeze(-1).float()
    assert ((ds.values[..., :3].double() * mask).sum(1) / mask.sum(1)).abs().max() < 1e-5
    assert torch.all(ds.values[..., 3:][ds.nodes].sum(1) == ONEHOT_SCALE) and torch.all(ds.values[~ds.nodes] == 0)


def test_max_atoms_drops_larger_molecules_and_sets_the_slots(everything):
    small = qm9("all", max_atoms=12)
    assert small.sample_shape == (12, 8) and small.atom_counts.max() <= 12
    assert len(small) == int((everything.atom_counts <= 12).sum())
    position = {name: k for k, name in enumerate(everything.names)}
    rows = torch.tensor([position[name] for name in small.names[:100]])
    assert torch.equal(small.values[:100], everything.values[rows, :12])
    histogram = small.atom_count_histogram()
    assert histogram.shape == (13,) and abs(histogram.sum().item() - 1) < 1e-12


def test_batches_conditions_and_molecules_agree(everything):
    index = torch.tensor([3, 1000, 77])
    x, labels = everything.batch(index)
    assert x.shape == (3, 29, 8) and labels.tolist() == [-1, -1, -1]
    nodes = everything.conditions(index)["nodes"]
    assert nodes.dtype == torch.bool and torch.equal(nodes, everything.nodes[index])
    noisy = x.clone()
    # features moved by less than ONEHOT_SCALE / 2 each: the largest column stays the element's
    noisy[..., 3:] += 0.24 * (torch.rand(noisy[..., 3:].shape, generator=torch.Generator().manual_seed(0)) - 0.5)
    for a, b in zip(to_molecules(noisy, nodes), everything.molecules(index)):
        assert a.symbols == b.symbols and np.array_equal(a.positions, b.positions)
        assert len(a) == len(a.positions) and a.positions.dtype == np.float64


def test_g2_set_holds_the_hcnof_molecules_centred():
    g2 = g2_set()
    assert len(g2) == 98 and g2.sample_shape == (14, 8) and g2.smiles is None and g2.name == "g2"
    methane = g2.molecules(torch.tensor([g2.names.index("CH4")]))[0]
    assert methane.symbols == tuple("CHHHH") and methane.formula == "CH4"
    assert np.allclose(np.linalg.norm(methane.positions[1:] - methane.positions[0], axis=1), 1.087, atol=0.005)
    assert np.abs(methane.positions.mean(0)).max() < 1e-6
    heavy = g2_set(hydrogens=False)
    assert len(heavy) == 96 and "H2" not in heavy.names and heavy.elements == HEAVY_ELEMENTS
    assert heavy.molecules(torch.tensor([heavy.names.index("CH3CH2OH")]))[0].symbols == ("C", "C", "O")


def test_parse_reads_python_literals_with_short_and_exponent_numbers_sorted_by_index(tmp_path):
    head = "XYZ_file,Index,SMILES,N_atoms,Elements,XYZ_Ang"
    rows = ['"b.xyz",7,"N#N",2,"[\'N\',\'N\']","[[0.,0.,0.55],[0.,0.,-5.5E-1]]"',
            '"a.xyz",2,"C",5,"[\'C\',\'H\',\'H\',\'H\',\'H\']","[[0,0,0],[1.,0,0],[0,1.,0],[0,0,1.],[1E0,1,1]]"']
    path = tmp_path / "part.csv"
    path.write_text("\n".join([head, *rows]) + "\n")
    table = parse_qm9([path])
    assert table["index"].tolist() == [2, 7] and table["smiles"].tolist() == ["C", "N#N"]
    assert table["types"].shape == (2, 29) and table["types"][1, :3].tolist() == [2, 2, -1]
    assert table["types"][0, :5].tolist() == [1, 0, 0, 0, 0] and table["positions"].dtype == np.float32
    assert np.array_equal(table["positions"][1, :2], np.float32([[0, 0, 0.55], [0, 0, -0.55]]))
    assert np.array_equal(table["positions"][0, 4], [1, 1, 1]) and not table["positions"][0, 5:].any()


def test_bad_arguments_and_a_missing_package_say_what_to_do(monkeypatch):
    for kwargs in ({"split": "validation"}, {"max_atoms": 0}, {"limit": 0}, {"seed": -1}):
        with pytest.raises(ValueError, match="must be"):
            qm9(**kwargs)
    with pytest.raises(ValueError, match="no QM9 molecule"):
        qm9("all", max_atoms=2)
    with pytest.raises(ValueError, match="3 \\+ 5"):
        to_molecules(torch.zeros(1, 4, 7), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions must be"):
        Molecule(("C", "H"), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="atoms .* first"):
        MoleculeSet(torch.zeros(1, 3, 8), torch.tensor([[False, True, True]]), name="bad")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)  # as if not installed
    with pytest.raises(ValueError, match="pip install qm9pack==1.0.3"):
        qm9_files()


def test_a_molecule_set_declares_the_space_its_runs_diffuse_in():
    """space_for asks the data set's class, without loading it, whether its samples live in a space of
    their own: molecules do (the zero-centre subspace, with the set's own histogram of atom counts),
    images do not (and a set without one says so if asked)."""
    from types import SimpleNamespace

    from unnoise.centred import CentredSpace
    from unnoise.data import DataConfig, load_dataset, set_class
    from unnoise.latent import PixelSpace, space_for

    g2 = DataConfig(name="g2")
    space = space_for(SimpleNamespace(data=g2, latent=None))
    assert isinstance(space, CentredSpace) and set_class(g2).has_own_space
    torch.testing.assert_close(space.counts, g2_set().atom_count_histogram(), rtol=0, atol=0)
    mnist = DataConfig(name="mnist")
    assert not set_class(mnist).has_own_space
    assert isinstance(space_for(SimpleNamespace(data=mnist, latent=SimpleNamespace(autoencoder=""))), PixelSpace)
    with pytest.raises(TypeError, match="no space of its own"):
        load_dataset(DataConfig(name="moons")).space()
