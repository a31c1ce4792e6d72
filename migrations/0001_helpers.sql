-- Shared helpers every later migration uses.

-- Case-insensitive text for emails and slugs compared without regard to case.
CREATE EXTENSION IF NOT EXISTS citext;
-- Trigram similarity for fuzzy product search.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Keeps updated_at true on every UPDATE of a table that calls trigger_updated_at('table').
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION trigger_updated_at(tablename regclass) RETURNS void AS $$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER set_updated_at BEFORE UPDATE ON %s
         FOR EACH ROW WHEN (OLD IS DISTINCT FROM NEW) EXECUTE FUNCTION set_updated_at();',
        tablename);
END;
$$ LANGUAGE plpgsql;
