"""`python -m voltron.pretrain --config FILE.yaml [...]`, the entry point torchrun launches on every rank."""

import sys

from voltron.pretrain.cli import main

sys.exit(main())
