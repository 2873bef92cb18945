from macula.cli.main import main

raise SystemExit(main())
