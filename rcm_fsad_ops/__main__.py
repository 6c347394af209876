from rcm_fsad_ops.cli import main

raise SystemExit(main(prog="python -m rcm_fsad_ops"))
