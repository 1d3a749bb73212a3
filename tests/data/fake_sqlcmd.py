"""A stand-in for `sqlcmd`, for tests: no SQL Server runs here.

It reads `fake_sqlcmd.json` beside itself ({"server_dir", "local_dir", "mode", "size"}) and
appends one JSON line per call to `fake_sqlcmd.log` beside itself: its argv and whether the
password came in SQLCMDPASSWORD. It answers the statements backupd sends the way sqlcmd would.
"""

import json
import os
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
config = json.loads((HERE / "fake_sqlcmd.json").read_text())
args = sys.argv[1:]
with (HERE / "fake_sqlcmd.log").open("a") as log:
    log.write(json.dumps({"argv": args, "password": os.environ.get("SQLCMDPASSWORD")}) + "\n")


def local(server_path: str) -> Path:
    return Path(config["local_dir"]) / Path(server_path).relative_to(config["server_dir"])


if "-?" in args:
    print("Microsoft (R) SQL Server Command Line Tool\nVersion 18.4.0001.1 Linux")
    sys.exit(0)
query = args[args.index("-Q") + 1]
if os.environ.get("SQLCMDPASSWORD") != config["password"]:
    print("Sqlcmd: Error: Microsoft ODBC Driver 18 for SQL Server : Login failed for user 'sa'..")
    sys.exit(1)
if "@@VERSION" in query:
    print("Microsoft SQL Server 2022 (RTM-CU12) - 16.0.4125.3 (X64)")
elif "sys.master_files" in query:
    print(config["size"])
elif query.startswith("BACKUP DATABASE"):
    path = re.search(r"TO DISK = N'((?:[^']|'')*)'", query).group(1).replace("''", "'")
    if config["mode"] == "denied":
        local(path).write_bytes(b"partial")
        print(
            f"Msg 3201, Level 16, State 1, Server db, Line 1\nCannot open backup device '{path}'. "
            "Operating system error 5(Access is denied.).\nMsg 3013, Level 16, State 1\n"
            "BACKUP DATABASE is terminating abnormally."
        )
        sys.exit(1)
    local(path).write_bytes(random.Random(7).randbytes(config["size"]))
    if config["mode"] == "unreadable":  # a server of another user, under umask 077
        local(path).chmod(0)
    print("Processed 1536 pages for database 'shop', file 'shop' on file 1.")
    print("BACKUP DATABASE successfully processed.")
elif query.startswith("RESTORE FILELISTONLY"):
    print(
        "shop|/var/opt/mssql/data/shop.mdf|D|PRIMARY\nshop_log|/var/opt/mssql/data/shop_log.ldf|L|NULL"
    )
elif query.startswith("RESTORE DATABASE"):
    path = re.search(r"FROM DISK = N'((?:[^']|'')*)'", query).group(1).replace("''", "'")
    restored = local(path).read_bytes()
    (HERE / "restored.bak").write_bytes(restored)
    print("RESTORE DATABASE successfully processed 1538 pages.")
elif "sys.databases WHERE name" in query:
    name = re.search(r"WHERE name = N'((?:[^']|'')*)'", query).group(1).replace("''", "'")
    print("1" if name in config.get("databases", []) else "0")
sys.exit(0)
