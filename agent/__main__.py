"""`python -m agent`: the terminal chat."""

import os
import sys

# gRPC (the Milvus client's transport) logs its own internal errors on stderr, e.g. its poller's "epoll_wait
# error: Bad file descriptor" when the chat leaves while an abandoned reply still runs. Store failures reach the
# chat as exceptions and are said in one line; gRPC's log lines have no place in the terminal. Set before gRPC
# starts; a GRPC_VERBOSITY of the user's own wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from agent.cli import main

sys.exit(main())
