"""Run the documented Python blocks, each on its own: ``python tests/docs_blocks.py BLOCKS.json RESULTS.json``.

BLOCKS.json is a list of code strings. Each block runs as ``__main__`` in a fresh namespace and a fresh empty working
folder, after `docs_prelude` (Hub ids become tiny random models); RESULTS.json gets the traceback of each failed
block, or ``""``. One process for all blocks: the imports are paid once.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback

import docs_prelude  # noqa: F401  (patches from_pretrained for Hub ids)


def main() -> None:
    blocks_file, results_file = (os.path.abspath(p) for p in sys.argv[1:3])
    results = []
    for index, code in enumerate(json.load(open(blocks_file))):
        os.chdir(tempfile.mkdtemp(prefix=f"docs_block{index}_"))
        try:
            exec(compile(code, f"<docs block {index}>", "exec"), {"__name__": "__main__"})
            results.append("")
        except BaseException:  # noqa: BLE001 - SystemExit included: a block must not exit
            results.append(traceback.format_exc(limit=-6))
    json.dump(results, open(results_file, "w"))


if __name__ == "__main__":
    main()
