from scanstream.cli import main

raise SystemExit(main())
