"""Run the page on its own against a Proxima API elsewhere: `python -m ui --api http://host:8000`."""

from __future__ import annotations

import argparse

from ui.app import CSS, build_ui
from ui.service import RemoteService
from ui.text import i18n


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ui", description=__doc__)
    parser.add_argument("--api", required=True, help="base URL of the Proxima API, e.g. http://gpu-box:8000")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve the page on (default %(default)s)")
    parser.add_argument("--flower-url", default="", help="Flower's address, for the link on the status tab")
    parser.add_argument("--api-key", default="", help="sent as X-API-Key when the API requires one")
    args = parser.parse_args()
    service = RemoteService(args.api, flower_url=args.flower_url, api_key=args.api_key)
    build_ui(service).launch(server_name=args.host, server_port=args.port, i18n=i18n, css=CSS, ssr_mode=False,
                             show_error=False, footer_links=[])


if __name__ == "__main__":
    main()
