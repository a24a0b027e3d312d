"""Write ``tests/fixtures/xlstm_lm_<case>.npz`` from the official PyTorch model (``tests/xlstm_lm_cases.py``).

Usage (needs torch and xlstm 2.0.6)::

    python tests/generate_xlstm_lm_fixtures.py
"""

from __future__ import annotations

from xlstm_lm_cases import CASES, FIXTURES, official_case, save_fixture


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    total = 0
    for name in CASES:
        path = save_fixture(name, official_case(name))
        total += path.stat().st_size
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")
    print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
