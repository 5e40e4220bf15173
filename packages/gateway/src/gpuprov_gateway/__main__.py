from gpuprov_gateway.cli import main

raise SystemExit(main())
