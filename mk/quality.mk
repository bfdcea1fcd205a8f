##@ Quality
.PHONY: test
test: $(SETUP_STAMP) models $(TEST_PREREQS) ## Install what the tests need, then run every test (starts and stops real services)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(SETUP_STAMP) ## ruff check of the whole project
	$(PY) -m ruff check .

.PHONY: clean
clean: down ## Remove built archives and run state (keeps .venv and .cache)
	rm -rf model-archive/build .run
