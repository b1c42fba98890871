from ttsplugin.cli import main

raise SystemExit(main())
