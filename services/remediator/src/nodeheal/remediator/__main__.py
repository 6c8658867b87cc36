"""`python -m nodeheal.remediator`: run one remediator replica (configured by NODEHEAL_REMEDIATOR_* env vars)."""

from nodeheal.remediator.app import main

main()
