"""Unsafe mode: the program runs as a plain subprocess, NOT isolated.

Only for a machine where no isolating backend works and the user explicitly accepts the risk
(`--sandbox unsafe`). It is logged loudly and recorded in every result (`isolated: false`). It still
applies what it can: a clean environment (no keys), rlimits, its own session, a wall-clock kill.
The sandbox paths (/sandbox/...) are rewritten to the host folders they stand for.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from darwin.sandbox.base import (
    SandboxProcess,
    SandboxResult,
    SandboxSpec,
    base_env,
    held,
    idle_now,
)
from darwin.sandbox.limits import set_rlimits

log = logging.getLogger(__name__)


class UnsafeSandbox:
    name = "unsafe"
    isolated = False

    def _translate(self, spec: SandboxSpec, text: str) -> str:
        # Longest destination first so /sandbox/out never matches inside /sandbox/outer.
        for m in sorted(spec.mounts, key=lambda m: len(m.dst), reverse=True):
            if text == m.dst or text.startswith(m.dst + "/") or text.startswith(m.dst + os.pathsep):
                text = str(m.src) + text[len(m.dst) :]
            text = text.replace(os.pathsep + m.dst, os.pathsep + str(m.src))
        return text

    def start(self, spec: SandboxSpec, *, pipe: bool = False) -> SandboxProcess:
        log.warning("UNSAFE sandbox: running untrusted code without isolation (%s)", spec.label)
        spec, handover = held(spec)
        env = {k: self._translate(spec, v) for k, v in base_env(spec).items()}
        argv = [self._translate(spec, a) for a in spec.argv]
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        memory = spec.memory_mb << 20
        max_file = spec.max_file_mb << 20
        cpus = spec.cpus

        def preexec() -> None:
            set_rlimits(max_file, memory_bytes=None if spec.gpu else memory, nproc=None)
            if cpus:
                os.sched_setaffinity(0, cpus)
            if handover is not None and handover.idle:
                idle_now()

        log_file = open(spec.log_path, "wb") if spec.log_path else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                argv,
                cwd=self._translate(spec, spec.cwd),
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else log_file,
                stderr=log_file,
                env=env,
                preexec_fn=preexec,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            if log_file is not subprocess.DEVNULL:
                log_file.close()
        return SandboxProcess(popen, spec, backend=self.name, isolated=False, handover=handover)

    def run(self, spec: SandboxSpec) -> SandboxResult:
        return self.start(spec).wait()
