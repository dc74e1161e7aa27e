"""The Arrow clients of `make bench-agent`, started by `sonde-agent-bench`
with the bench virtualenv's interpreter ($SONDE_CACHE/venv-bench: pyarrow,
the ADBC Flight SQL driver and DuckDB). Loopback only.

  bench-flight.py serve URI TICKET
      Reads the whole table from the agent at URI once (DoGet TICKET), holds
      it in memory and serves it with pyarrow's own C++ Flight server on
      127.0.0.1: every DoGet, whatever its ticket, gets the whole table as
      one RecordBatchStream. Prints {"port", "rows", "bytes"} as one JSON
      line, then serves until its standard input closes.

  bench-flight.py client
      Reads one JSON command per line on standard input and answers each
      with one JSON line on standard output:
        {"op": "load", "uri", "ticket"}   keeps the table (one DoGet) for DuckDB
        {"op": "doget", "uri", "ticket"}  reads the whole table: seconds, rows, bytes
        {"op": "sql", "uri", "query"}     runs a query over Flight SQL (ADBC)
        {"op": "duckdb", "query"}         runs a query in DuckDB on the kept table `t`
      Errors are answered as {"error": "..."}; the process keeps going.
"""

import json
import sys
import time
import warnings

import pyarrow.flight as flight


# The ADBC driver warns that Flight SQL connections keep autocommit on;
# the bench only reads.
warnings.filterwarnings("ignore", message="Cannot disable autocommit")


def read_table(client, ticket):
    return client.do_get(flight.Ticket(ticket.encode())).read_all()


class TableServer(flight.FlightServerBase):
    """Serves one in-memory table to every DoGet."""

    def __init__(self, table):
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.table)


def serve(uri, ticket):
    table = read_table(flight.connect(uri), ticket)
    server = TableServer(table)
    print(json.dumps({"port": server.port, "rows": table.num_rows, "bytes": table.nbytes}), flush=True)
    # Requests are served on the server's own threads; this one waits for
    # the bench to close standard input.
    sys.stdin.read()
    server.shutdown()


class Client:
    def __init__(self):
        self.flight = {}
        self.sql = {}
        self.table = None
        self.duckdb = None

    def flight_client(self, uri):
        if uri not in self.flight:
            self.flight[uri] = flight.connect(uri)
        return self.flight[uri]

    def load(self, uri, ticket):
        import duckdb

        self.table = read_table(self.flight_client(uri), ticket)
        self.duckdb = duckdb.connect()
        self.duckdb.register("t", self.table)
        return {"rows": self.table.num_rows, "bytes": self.table.nbytes}

    def doget(self, uri, ticket):
        client = self.flight_client(uri)
        start = time.perf_counter()
        table = read_table(client, ticket)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "rows": table.num_rows, "bytes": table.nbytes, "batches": len(table.to_batches())}

    def run_sql(self, uri, query):
        import adbc_driver_flightsql.dbapi as dbapi

        if uri not in self.sql:
            self.sql[uri] = dbapi.connect(uri)
        with self.sql[uri].cursor() as cursor:
            start = time.perf_counter()
            cursor.execute(query)
            result = cursor.fetch_arrow_table()
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "rows": rows(result)}

    def run_duckdb(self, query):
        if self.duckdb is None:
            raise RuntimeError("no table loaded for DuckDB")
        start = time.perf_counter()
        result = self.duckdb.execute(query).fetchall()
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "rows": [list(r) for r in result]}

    def answer(self, command):
        op = command["op"]
        if op == "load":
            return self.load(command["uri"], command["ticket"])
        if op == "doget":
            return self.doget(command["uri"], command["ticket"])
        if op == "sql":
            return self.run_sql(command["uri"], command["query"])
        if op == "duckdb":
            return self.run_duckdb(command["query"])
        raise ValueError(f"unknown op {op!r}")


def rows(table):
    return [list(r.values()) for r in table.to_pylist()]


def client():
    state = Client()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = state.answer(json.loads(line))
        except Exception as e:  # answered, so the bench can say what failed
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2 and sys.argv[1] == "client":
        client()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
