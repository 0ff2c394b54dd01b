from cangku.cli import main

raise SystemExit(main())
