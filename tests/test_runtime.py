"""Tests for moldiff/runtime.py: the glibc allocator setting the CLI applies at start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from moldiff import runtime

PROBE = "from moldiff.runtime import tune_cpu_allocator as t; print(t(), t())"


def run_probe(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MOLDIFF_TUNE_MALLOC"}
    if env_value is not None:
        env["MOLDIFF_TUNE_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tunes_glibc_once_and_idempotently():
    # Debian/Ubuntu glibc accepts both settings; the second call returns the cached answer
    assert run_probe(None) == "True True"


def test_env_switch_turns_it_off():
    assert run_probe("0") == "False False"


def test_no_libc_is_a_quiet_no_op(monkeypatch):
    monkeypatch.setattr(runtime, "_tuned", None)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *_: (_ for _ in ()).throw(OSError("no libc")))
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.delenv("MOLDIFF_TUNE_MALLOC", raising=False)
    assert runtime.tune_cpu_allocator() is False


def test_cli_tunes_the_allocator_before_running_a_command(monkeypatch, capsys):
    from moldiff import cli

    calls = []
    monkeypatch.setattr(cli, "tune_cpu_allocator", lambda: calls.append(1) or True)
    assert cli.main(["sample", "--model", "no-such-model", "--num", "1", "--out", "x.sdf"]) == 2
    assert calls == [1] and "no-such-model" in capsys.readouterr().err
