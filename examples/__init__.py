"""The examples, shipped with the package as `orchestrator.examples` (pyproject.toml):
`orchestrator demo` runs postings/ from wherever wavefarm is installed."""
