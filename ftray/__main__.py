from ftray.cli import main

raise SystemExit(main())
