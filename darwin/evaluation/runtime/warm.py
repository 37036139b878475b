"""A pre-started sandbox: import the heavy modules now, run the real program when told to.

Trusted code, mounted read-only at /sandbox/lib. A sandbox started this way pays for the
interpreter, ``import torch`` (and on a GPU the CUDA context) while earlier children still run;
the scheduler then puts the program (or, for the scorer, the model) in place and creates the
go file, and only from that moment does the program's clock run. Nothing of the program exists
in this process before the go file: whatever ran here before it is ours.

    python /sandbox/lib/warm.py PROGRAM [ARGS...]

Environment (removed before the program starts): DARWIN_WARM_IMPORTS (comma-separated modules),
DARWIN_WARM_CUDA=1 (initialise CUDA), DARWIN_WARM_READY (a file to create once warm; its folder
must be writable), DARWIN_WARM_GO (the file whose appearance means: run), DARWIN_WARM_MAX_S (give
up and exit 0 after this long without a go file; the scheduler is gone).
"""

import importlib
import os
import runpy
import sys
import time


def _warm_up(modules, cuda):
    for name in modules:
        if name:
            importlib.import_module(name)
    if cuda:
        import torch

        if torch.cuda.is_available():
            torch.cuda.init()


def _wait_for(path, max_s):
    # A stat every 5 ms costs nothing measurable and needs no channel the program could reuse.
    deadline = time.monotonic() + max_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def main():
    env = os.environ
    modules = env.pop("DARWIN_WARM_IMPORTS", "").split(",")
    cuda = env.pop("DARWIN_WARM_CUDA", "") == "1"
    ready = env.pop("DARWIN_WARM_READY", "")
    go = env.pop("DARWIN_WARM_GO")
    max_s = float(env.pop("DARWIN_WARM_MAX_S", "3600"))
    _warm_up(modules, cuda)
    if ready:
        with open(ready, "w"):
            pass
    if not _wait_for(go, max_s):
        os._exit(0)
    program = sys.argv[1]
    # Exactly what `python PROGRAM ARGS` would see: argv, and the program's folder first on the
    # import path (an approved file layout's modules sit next to it).
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(program))
    runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
