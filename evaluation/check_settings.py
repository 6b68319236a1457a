"""Check an EAGLE generator command line's settings without touching any file: exit 0, or 2 with the
message. Scripts run it before they build checkpoints, fetch questions or load a model.

`python -m evaluation.check_settings [the options of gen_ea_answer_llama3chat]`
"""
import sys

from evaluation.gen_cli import check_main

if __name__ == "__main__":
    sys.exit(check_main())
