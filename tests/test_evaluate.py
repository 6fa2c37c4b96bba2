"""cifarlab.evaluate through its real CLI, on a checkpoint from a real smoke run: its main() in this process, and
launched on 2 processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import check, cli_env, error_lines, in_process, metrics, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def run_dir(smoke_reference: Path) -> Path:
    """The session's finished smoke run (conftest): read, never written."""
    return smoke_reference


def _accuracy(stdout: str) -> tuple[float, int]:
    found = re.search(r"test accuracy ([\d.]+) % \((\d+) images\)", stdout)
    assert found, stdout
    return float(found.group(1)), int(found.group(2))


def test_evaluate_reports_the_final_accuracy_and_writes_a_png(run_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "confusion.png"
    result = check(in_process(["--checkpoint", str(run_dir), "--png", str(png)], capsys, module="cifarlab.evaluate"))
    accuracy, count = _accuracy(result.stdout)
    final = metrics(run_dir)[-1]
    assert count == final["test/images"] == 100
    assert accuracy == pytest.approx(100 * final["test/acc"], abs=0.01)
    top5 = re.search(r"\(100 images\), top-5 ([\d.]+) %", result.stdout)
    assert top5 and float(top5.group(1)) == pytest.approx(100 * final["test/acc_top5"], abs=0.01)
    assert "confusion matrix (rows: true class; columns: predicted, by the row's number)" in result.stdout
    assert all(name in result.stdout for name in ("airplane", "truck"))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 400


def test_evaluate_draws_svg_and_pdf_by_the_ending_and_imports_matplotlib_only_for_a_picture(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, start in (("confusion.svg", (b"<?xml", b"<svg")), ("confusion.pdf", (b"%PDF",))):
        check(in_process(["--checkpoint", str(run_dir), "--png", str(tmp_path / name)], capsys,
                         module="cifarlab.evaluate"))
        assert (tmp_path / name).read_bytes().startswith(start)
    probe = ("import sys; from cifarlab.evaluate import main; code = main(sys.argv[1:]); "
             "print('matplotlib' in sys.modules); sys.exit(code)")
    plain = check(subprocess.run([sys.executable, "-c", probe, "--checkpoint", str(run_dir)], cwd=tmp_path,
                                 env=cli_env(), capture_output=True, text=True, timeout=300))
    assert plain.stdout.splitlines()[-1] == "False"


def test_a_picture_evaluate_cannot_write_is_refused_before_any_work(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # The checkpoint does not exist either: the picture's name is refused first, before anything is read.
    result = in_process(["--checkpoint", str(tmp_path / "nope"), "--png", str(tmp_path / "x.gif")], capsys,
                        module="cifarlab.evaluate")
    assert result.returncode == 2 and error_lines(result.stderr) == [
        f"cifarlab: error: --png {tmp_path / 'x.gif'}: the name's ending picks the picture's format; give a file name "
        f"ending in .png, .svg or .pdf"]
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_folders_files_and_two_processes_agree(run_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # 37 images in global batches of 8 on 2 processes: every image counted once.
    subset = ["data.test_size=37", "train.eval_batch_size=8"]
    one = check(in_process(["--checkpoint", str(run_dir / "model.safetensors"), *subset], capsys,
                           module="cifarlab.evaluate"))
    two = check(run_cli(["--checkpoint", str(run_dir / "checkpoints" / "best"), *subset],
                        tmp_path, processes=2, module="cifarlab.evaluate"))
    assert _accuracy(one.stdout)[1] == _accuracy(two.stdout)[1] == 37
    assert "2 process(es)" in two.stdout and two.stdout.count("confusion matrix") == 1


def test_bad_checkpoints_fail_with_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    (broken / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    for checkpoint, expected in ((tmp_path / "nope", "no model.safetensors there"),
                                 (broken, "is not a readable safetensors file")):
        result = in_process(["--checkpoint", str(checkpoint)], capsys, module="cifarlab.evaluate")
        assert result.returncode == 2
        (line,) = error_lines(result.stderr)
        assert str(checkpoint) in line and expected in line
