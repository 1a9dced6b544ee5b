"""The `lion` command: one entry point for every lion command line (installed by `pip install lion`).

    lion --help
    lion run --config configs/smoke.yaml          # = python -m lion.run --config configs/smoke.yaml
    lion status runs/smoke                        # = python -m lion.status runs/smoke

`lion SUB ARGS...` runs `python -m lion.<module> ARGS...` in this process: the same arguments, output and exit
status (a user error is one `error:` line on stderr and status 2; a budget stop, status 3).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("lion.run", "run or resume the adversarial loop (imitation, discrimination, generation per round)"),
    "imitation": ("lion.imitation", "phase 1 of one round: teacher answers the Train Pool, the student trains"),
    "discrimination": ("lion.discrimination", "phase 2 of one round: the referee splits the Cache Pool hard/easy"),
    "preference": ("lion.preference", "optional stage of one round (imitation.preference): DPO or SPIN on the "
                                      "student's own answers"),
    "generation": ("lion.generation", "phase 3 of one round: new instructions from hard and easy seeds"),
    "control": ("lion.control", "the control student of one round: as many new instructions without the referee"),
    "evaluate": ("lion.evaluate", "relative score of a student against reference answers"),
    "benchmarks": ("lion.benchmarks", "lm-evaluation-harness tasks (BBH, AGIEval, your own) on a round's student"),
    "report": ("lion.report", "HTML report and text summary of a run"),
    "export": ("lion.export", "a run as SFT data (alpaca, sharegpt, messages) or DPO pairs, with a dataset card"),
    "plan": ("lion.plan", "estimate calls, hours and USD of a config before running it"),
    "status": ("lion.status", "which phases of which rounds are done, what is in flight, the spend so far"),
    "config": ("lion.config", "validate a config and print it resolved (--reference: every key)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lion COMMAND [ARGS...]   (lion COMMAND --help for its arguments)", "",
             "Adversarial distillation of an LLM into a small open student (Lion, Jiang et al., 2023).", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `lion` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        from . import __version__

        print(f"lion {__version__}")
        sys.exit(0)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module_name = COMMANDS[name][0]
    if importlib.util.find_spec(module_name) is None:
        print(f"error: lion {name} is not available yet in this version ({module_name} is not installed)",
              file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(module_name)
    from .errors import cli_main

    cli_main(module.main, rest)


if __name__ == "__main__":
    main()
