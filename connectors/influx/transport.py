"""InfluxDB line protocol and the HTTP transport (influxdb-client) the ``influxdb`` sink plugs into the sender.

>>> from connectors.influx.outbox import Row
>>> line(Row(1, "win", {"site": "hall 1", "dev": "a,b"}, 1_700_000_000_000_000_000,
...          {"t_mean": 1.5, "ok": True}, 0, False, 0), "ms")
'win,dev=a\\\\,b,site=hall\\\\ 1 ok=true,t_mean=1.5 1700000000000'
"""
from __future__ import annotations

import gzip as _gzip
import json

from connectors.influx.outbox import Row
from connectors.influx.sender import PermanentError, TransientError, parse_retry_after
from pipeline.redact import mask_url_credentials

PRECISION_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
# A backslash is escaped too (InfluxDB 2 reads two as one): a tag value ending in one escaped the separator after it,
# and the line was refused (InfluxDB: 400 for the whole batch) or its point dropped (VictoriaMetrics: 204).
_MEAS = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ ", "\n": "\\n"})
_KEY = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n"})
HALT_STATUSES = {401, 403, 404}   # every later batch would be refused the same way


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(float(v))


def line(row: Row, precision: str) -> str:
    """One point in line protocol; tags and fields sorted by key (what InfluxDB recommends)."""
    tags = "".join(f",{k.translate(_KEY)}={v.translate(_KEY)}" for k, v in sorted(row.tags.items()) if v != "")
    fields = ",".join(f"{k.translate(_KEY)}={_value(v)}" for k, v in sorted(row.fields.items()))
    return f"{row.measurement.translate(_MEAS)}{tags} {fields} {row.ts // PRECISION_NS[precision]}"


def server_message(body) -> str:
    """The ``message`` of an InfluxDB error body, else the body itself (shortened)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])[:500]
    except (TypeError, ValueError):
        pass
    return (body or "").strip()[:500]


class InfluxTransport:
    """Writes batches to ``/api/v2/write`` with influxdb-client (synchronous; retries are the sender's job).

    The token lives only inside the client's Authorization header; errors and logs never include it.
    """

    def __init__(self, *, url: str, org: str, bucket: str, token: str, precision: str = "ms",
                 timeout_s: float = 10.0, gzip: bool = False, verify_tls: bool = True, ca_file: str | None = None,
                 sink_id: str = "influxdb"):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url, self.org, self.bucket, self.precision, self.sink_id = url, org, bucket, precision, sink_id
        self.shown_url = mask_url_credentials(url)  # never log credentials written into the URL
        self.gzip = gzip
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout_s * 1000),
                                      enable_gzip=gzip, verify_ssl=verify_tls, ssl_ca_cert=ca_file)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def encode(self, rows: list[Row]) -> bytes:
        return "\n".join(line(r, self.precision) for r in rows).encode()

    def send(self, rows: list[Row]) -> int:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        body = self.encode(rows)
        try:
            self._write.write(self.bucket, self.org, body, write_precision=self.precision)
        except ApiException as e:
            status, msg = e.status, server_message(e.body)
            where = f"sink {self.sink_id!r}: {self.shown_url} answered {status} {e.reason or ''}".rstrip()
            if status == 429 or (status or 0) >= 500:
                raise TransientError(f"{where}: {msg}", parse_retry_after((e.headers or {}).get("Retry-After")),
                                     status) from None
            hint = {400: "the server rejected the data (field type conflict, bad line); fix the pipeline's fields",
                    401: "the token is missing, wrong or expired; check the token's environment variable or file",
                    403: "the token may not write to this bucket; grant write access",
                    404: f"org {self.org!r} or bucket {self.bucket!r} does not exist; create it or fix the config",
                    413: "the batch is too large; lower batch_size"}.get(status, "see the server's message")
            raise PermanentError(f"{where}: {msg} ({hint})", status, halt=status in HALT_STATUSES) from None
        except (HTTPError, OSError) as e:
            raise TransientError(f"sink {self.sink_id!r}: {self.shown_url} unreachable: {type(e).__name__}") from None
        return len(_gzip.compress(body)) if self.gzip else len(body)     # what went over the wire

    def close(self) -> None:
        self._client.close()
