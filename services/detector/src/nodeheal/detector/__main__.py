"""`python -m nodeheal.detector`: run the detector service (configured by NODEHEAL_DETECTOR_* env vars)."""

from nodeheal.detector.app import main

main()
