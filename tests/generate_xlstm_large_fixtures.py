"""Write ``tests/fixtures/xlstm_large_<case>.npz`` from the official model (``tests/xlstm_large_cases.py``).

Usage (needs torch and xlstm 2.0.6; run from the repository root)::

    python tests/generate_xlstm_large_fixtures.py
"""

from __future__ import annotations

import json

import numpy as np

from xlstm_large_cases import CASES, FIXTURES, case_inputs, official_model, run_official


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    for name, case in CASES.items():
        inputs = case_inputs(name)
        model = official_model(inputs["arch"], inputs["weights"])
        logits, state = run_official(model, inputs["ids"])
        data = {"arch": np.array(json.dumps(inputs["arch"])), "ids": inputs["ids"], "logits": logits}
        data.update({f"w.{k}": v.astype(np.float16) for k, v in inputs["weights"].items()})
        data.update({f"state.{i}.{f}": x for i, s in enumerate(state) for f, x in zip("cnm", s)})
        if case["continue_len"]:
            logits2, state2 = run_official(model, inputs["ids2"], state)
            data.update(ids2=inputs["ids2"], logits2=logits2)
            data.update({f"state2.{i}.{f}": x for i, s in enumerate(state2) for f, x in zip("cnm", s)})
        path = FIXTURES / f"xlstm_large_{name}.npz"
        np.savez_compressed(path, **data)
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
