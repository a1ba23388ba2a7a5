"""``python -m heterolora_testing.idle SECONDS``: a project process that sleeps, for tests that
signal a run's process (the store signals only processes whose command line is the project's)."""
import sys
import time

if __name__ == "__main__":
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
