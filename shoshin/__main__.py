from shoshin.cli import main

raise SystemExit(main())
