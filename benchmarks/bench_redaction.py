"""What redaction costs on a typical venue error, against a regex-free control in one run.

``redact`` runs on every log line, span and page that carries a venue's text. It must stay a
few microseconds on a 200-character error: this prints its cost, the control's (``str.split``
on the same text, same process) and the ratio. It was a timed test once; a loaded machine made
the bound flaky, so it lives here, where figures are read, not asserted.

    .venv/bin/python benchmarks/bench_redaction.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from exitguard.redaction import redact

TEXT = ("RpcError: POST https://eth-mainnet.g.alchemy.com/v2/AbCdEfGhIjKlMnOpQrStUvWxYz0123"
        " failed (status 503): upstream connect error; Authorization: Bearer abc.def.ghi")
CLEAN = "price quote failed: upstream connect error, status 503, retrying in 200 ms"
RUNS = 5_000


def per_call(function: Callable[[str], object], text: str) -> float:
    return min(timeit.repeat(lambda: function(text), number=RUNS, repeat=5)) / RUNS


def main() -> None:
    control = per_call(str.split, TEXT)
    secret = per_call(redact, TEXT)
    clean = per_call(redact, CLEAN)
    print(f"redact, {len(TEXT)} chars with two secrets: {secret * 1e6:7.2f} µs"
          f"  ({secret / control:5.0f}x str.split on the same text)")
    print(f"redact, {len(CLEAN)} chars with none:       {clean * 1e6:7.2f} µs"
          f"  ({clean / control:5.0f}x)")
    print(f"control, str.split:                  {control * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
