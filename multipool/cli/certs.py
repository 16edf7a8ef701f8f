"""``multipool certs init`` / ``certs client``: development certificates."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from multipool.cli.masking import Masker
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, UsageError, print_json, render_table

if TYPE_CHECKING:
    from multipool.certs import CertPaths


def cmd_certs_init(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.certs import CertificateExistsError, generate_dev_certs

    directory = args.directory
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    try:
        paths = generate_dev_certs(
            directory,
            hosts=args.host or (),
            clients=args.client or ("certuser",),
            days=args.days,
            overwrite=args.force,
            key_type=args.key_type,
        )
    except CertificateExistsError as exc:
        print(
            f"multipool: {exc.path} already exists; nothing was written. Use --force to "
            "replace every file of the bundle (a new CA), or `multipool certs client "
            f"{directory} USER` to add a client certificate signed by the existing CA",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    except (NotADirectoryError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        print(f"multipool: cannot write the certificates: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    files = [
        (str(paths.ca_cert), "CA certificate", "0644"),
        (str(paths.ca_key), "CA private key: keep it secret, it signs certificates", "0600"),
        (str(paths.server_cert), "server certificate", "0644"),
        (str(paths.server_key), "server private key", "0600"),
        *_client_files(paths),
    ]
    if args.json:
        print_json(
            {
                "directory": str(paths.directory),
                "overwritten": bool(args.force),
                "files": [{"path": p, "what": w, "mode": m} for p, w, m in files],
            }
        )
        return EXIT_OK
    verb = "wrote (--force: existing files replaced)" if args.force else "created"
    print(f"{verb} a development CA, valid {args.days} days, in {paths.directory}/:")
    print(render_table(["FILE", "MODE", "WHAT"], [[p, m, w] for p, w, m in files], indent="  "))
    _print_how_to_use(paths)
    return EXIT_OK


def _client_files(paths: CertPaths) -> list[tuple[str, str, str]]:
    """``(path, what, mode)`` of each client certificate and key of the bundle."""
    files = []
    for user, (cert, key) in paths.clients.items():
        files.append((str(cert), f"client certificate for user {user!r}", "0644"))
        files.append((str(key), f"client private key for user {user!r}", "0600"))
    return files


def _print_how_to_use(paths: CertPaths) -> None:
    """The server settings and the application environment that use the new bundle."""
    print()
    print("Server (PostgreSQL postgresql.conf):")
    print(
        f"  ssl = on\n  ssl_cert_file = '{paths.server_cert}'\n"
        f"  ssl_key_file = '{paths.server_key}'\n  ssl_ca_file = '{paths.ca_cert}'"
    )
    print("Server (MySQL/MariaDB my.cnf [mysqld]):")
    print(
        f"  ssl_cert = {paths.server_cert}\n  ssl_key = {paths.server_key}\n"
        f"  ssl_ca = {paths.ca_cert}"
    )
    print("Application environment:")
    print(f"  DATABASE_SSLMODE=verify-full\n  DATABASE_SSLROOTCERT={paths.ca_cert}")
    first = next(iter(paths.clients.items()), None)
    if first is not None:
        cert, key = first[1]
        print(f"  # client certificate login ({first[0]})")
        print(f"  DATABASE_SSLCERT={cert}")
        print(f"  DATABASE_SSLKEY={key}")
    print("For development only: the keys are not encrypted.")


def cmd_certs_client(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.certs import CertificateExistsError, add_client_certs

    if args.days < 1:
        raise UsageError("--days must be at least 1")
    try:
        paths = add_client_certs(
            args.directory, args.user, days=args.days, overwrite=args.force,
            key_type=args.key_type,
        )
    except CertificateExistsError as exc:
        print(
            f"multipool: {exc.path} already exists; nothing was written (--force replaces it)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    files = _client_files(paths)
    if args.json:
        print_json(
            {
                "directory": str(paths.directory),
                "files": [{"path": p, "what": w, "mode": m} for p, w, m in files],
            }
        )
        return EXIT_OK
    print(f"issued by {paths.ca_cert}, valid {args.days} days:")
    print(render_table(["FILE", "MODE", "WHAT"], [[p, m, w] for p, w, m in files], indent="  "))
    return EXIT_OK
