from memlens.run.cli import main

raise SystemExit(main())
