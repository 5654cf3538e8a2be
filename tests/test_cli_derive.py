"""``unibias derive`` writes the derived equations as LaTeX."""

import pytest

from unibias.cli.main import main


def test_derive_writes_document(tmp_path):
    path = tmp_path / "two_layer.tex"
    status = main(["derive", "--depth", "2", "--fusion-layer", "2", "--latex",
                   str(path)])
    text = path.read_text()
    assert status == 0
    # The provenance comment lines come before the document.
    assert text.startswith("% unibias ")
    assert "\n\\documentclass" in text
    assert text.rstrip().endswith(r"\end{document}")
    assert "Conserved quantities" in text
    assert "Stability of the fixed points" in text
    # Two-layer late fusion on the toy data (rho = 0, sigma ratio 2): M_A
    # escapes along B at rate R_B_uni = 1 - rho^2 = 1, and M_0 along A at
    # Sigma_yA = 4 (eigenvalues of [[0, s], [s, 0]] blocks are +-s).
    assert r"M_{A} &: \lambda \in \{-8, -1, 0, 1\}" in text
    assert r"M_{0} &: \lambda \in \{-4, -1, 1, 4\}" in text


def test_derive_prints_every_fusion_layer(capsys):
    assert main(["derive", "--depth", "3"]) == 0
    text = capsys.readouterr().out
    for fusion_layer in (1, 2, 3):
        assert f"fusion layer $L_f = {fusion_layer}$" in text


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--depth", "11"], "--depth must be at least 1 and at most 10, got 11"),
        (["--depth", "3", "--fusion-layer", "4"],
         "--fusion-layer must be at least 1 and at most 3, got 4"),
        (["--rho", "1"], "--rho must lie in"),
        (["--data-stats", "missing-file.json"], "missing-file.json"),
    ],
)
def test_derive_rejects_bad_input(arguments, message, capsys):
    status = main(["derive", *arguments])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1
    assert message in error
    assert "Traceback" not in error
