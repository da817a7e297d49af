"""tests/test_training_callbacks.py's `nan_on_a_correction_step`, in a process of its own.

Usage: nan_on_a_correction_step.py MARKER (the file it touches when the fit
starts). Prints the result as one line of JSON.
"""

import json
import sys

import test_training_callbacks as t

print(json.dumps(t.nan_on_a_correction_step(sys.argv[1])))
