"""shared.model.torch_file reads torch.save files without torch: both formats (zip and legacy)
give what torch.load gives, every dtype and every view, and nothing but tensors and plain
containers is built (a pickle that would run code is refused, not run). torch writes the files
here; the reader itself never imports it (checked in tests/parity/test_i3d_parity.py)."""

from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np
import pytest

from shared.model.torch_file import TorchFileError, load_torch_file

torch = pytest.importorskip("torch")

FORMATS = {"zip": True, "legacy": False}  # torch.save's _use_new_zipfile_serialization


def _numpy(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_and_view_reads_as_torch_load_reads_it(fmt, tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    tensors = {
        "float": torch.randn(2, 3, generator=g), "double": torch.randn(3, generator=g).double(),
        "half": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(3, 2, generator=g).to(torch.bfloat16),
        "long": torch.tensor([1, -2, 3]), "int": torch.tensor([7], dtype=torch.int32),
        "int16": torch.tensor([-5], dtype=torch.int16),
        "int8": torch.tensor([-1], dtype=torch.int8),
        "uint8": torch.tensor([255], dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3), "empty": torch.zeros(0, 3),
        "conv": torch.randn(2, 3, 3, 1, 1, generator=g),
        # views: a transpose, a slice inside a storage other tensors share, the whole of it
        "transposed": base.t(), "slice": base[1:3, 2:], "base": base,
    }
    path = tmp_path / "state.pt"
    torch.save(tensors, path, _use_new_zipfile_serialization=FORMATS[fmt])
    got = load_torch_file(path)
    assert list(got) == list(tensors)
    for name, t in tensors.items():
        want = _numpy(t)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert got[name].flags.writeable, name  # a copy of its own, not a view of the file
    assert got["bf16"].dtype == np.float32  # numpy has no bfloat16: the same values as float32


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_state_dict_in_plain_containers_comes_back_whole(fmt, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4))
    saved = {"state_dict": model.state_dict(), "epoch": 3, "names": ["a", "b"], "pair": (1.5, None)}
    path = tmp_path / "run.pt"
    torch.save(saved, path, _use_new_zipfile_serialization=FORMATS[fmt])
    got = load_torch_file(path)
    assert (got["epoch"], got["names"], got["pair"]) == (3, ["a", "b"], (1.5, None))
    assert isinstance(got["state_dict"], collections.OrderedDict)
    assert list(got["state_dict"]) == list(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(got["state_dict"][k], v.numpy(), err_msg=k)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


@pytest.mark.parametrize("fmt", FORMATS)
def test_anything_but_tensors_is_refused_unrun(fmt, tmp_path, capsys):
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(3, 2), module, _use_new_zipfile_serialization=FORMATS[fmt])
    with pytest.raises(TorchFileError, match="refusing torch.nn.modules.linear.Linear"):
        load_torch_file(module)
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _RunsCode()}, evil,
               _use_new_zipfile_serialization=FORMATS[fmt])
    with pytest.raises(TorchFileError, match=r"refusing (__builtin__|builtins)\.print"):
        load_torch_file(evil)
    assert "ran code" not in capsys.readouterr().out


def test_bytes_that_are_no_torch_file_are_refused(tmp_path):
    cases = {"notes.pt": b"not a checkpoint\n", "empty.pt": b"",
             "pickle.pt": pickle.dumps({"a": 1}), "numbers.pt": np.arange(9.0).tobytes()}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "other.zip.pt", "w") as z:
        z.writestr("x/readme.txt", "hello")
    for path in tmp_path.iterdir():
        with pytest.raises(TorchFileError):
            load_torch_file(path)
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(100)}, truncated, _use_new_zipfile_serialization=False)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    with pytest.raises(TorchFileError, match="ends inside storage"):
        load_torch_file(truncated)
