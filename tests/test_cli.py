"""The `musiclm-jax` entry point: every area's subcommands are registered, and help is instant (no heavy imports)."""
import subprocess
import sys

from musiclm_jax import cli


def test_every_area_registers_its_subcommands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "data", "codec", "semantic", "mulan", "generate", "tokenize"} <= set(sub.choices)


def test_help_does_not_import_jax_or_tensorflow():
    code = ("import sys; from musiclm_jax import cli; cli.build_parser();"
            "heavy = [m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_command_is_a_usage_error(capsys):
    try:
        cli.main(["compose-symphony"])
    except SystemExit as e:
        assert e.code == 2
    assert "invalid choice" in capsys.readouterr().err
