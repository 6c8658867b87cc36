"""`python -m nodeheal.diagnoser`: run the diagnoser service (configured by NODEHEAL_DIAGNOSER_* env vars)."""

from nodeheal.diagnoser.app import main

main()
