-- Onboarding service: schema of record for the onboarding database
-- (instance onboarding-db-instance). Tables live in schema "onboarding",
-- the schema the service uses today in the shared instance.
-- Idempotent: running it again on a database that already has it changes nothing.

CREATE SCHEMA IF NOT EXISTS onboarding;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_type t
        JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'onboarding' AND t.typname = 'process_status'
    ) THEN
        CREATE TYPE onboarding.process_status AS ENUM
            ('pending', 'in_progress', 'blocked', 'completed', 'cancelled');
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_type t
        JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'onboarding' AND t.typname = 'step_status'
    ) THEN
        CREATE TYPE onboarding.step_status AS ENUM ('todo', 'doing', 'done', 'skipped');
    END IF;
END
$$;

-- Stamps every change to a row with the time it was made. An UPDATE that sets
-- updated_at itself (an import, a backfill, a replayed change) keeps its value.
CREATE OR REPLACE FUNCTION onboarding.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS onboarding.onboarding_processes (
    id            uuid                      NOT NULL DEFAULT gen_random_uuid(),
    -- The partner lives in the Partner Management database after the split:
    -- a plain indexed column, deliberately no foreign key.
    partner_id    uuid                      NOT NULL,
    status        onboarding.process_status NOT NULL DEFAULT 'pending',
    assigned_to   text,
    priority      smallint                  NOT NULL DEFAULT 3,
    due_date      date,
    started_at    timestamptz,
    completed_at  timestamptz,
    checklist     jsonb                     NOT NULL DEFAULT '{}'::jsonb,
    notes         text,
    created_at    timestamptz               NOT NULL DEFAULT now(),
    updated_at    timestamptz               NOT NULL DEFAULT now(),
    CONSTRAINT onboarding_processes_pkey PRIMARY KEY (id),
    CONSTRAINT onboarding_processes_priority_check CHECK (priority BETWEEN 1 AND 5)
);
CREATE INDEX IF NOT EXISTS onboarding_processes_partner_id_idx
    ON onboarding.onboarding_processes (partner_id);
CREATE INDEX IF NOT EXISTS onboarding_processes_status_idx
    ON onboarding.onboarding_processes (status) WHERE status <> 'completed';
CREATE OR REPLACE TRIGGER onboarding_processes_set_updated_at
    BEFORE UPDATE ON onboarding.onboarding_processes
    FOR EACH ROW EXECUTE FUNCTION onboarding.set_updated_at();

CREATE TABLE IF NOT EXISTS onboarding.onboarding_steps (
    id            bigint                 GENERATED ALWAYS AS IDENTITY,
    process_id    uuid                   NOT NULL,
    position      integer                NOT NULL,
    name          text                   NOT NULL,
    status        onboarding.step_status NOT NULL DEFAULT 'todo',
    is_mandatory  boolean                NOT NULL DEFAULT true,
    started_at    timestamptz,
    completed_at  timestamptz,
    payload       jsonb,
    CONSTRAINT onboarding_steps_pkey PRIMARY KEY (id),
    CONSTRAINT onboarding_steps_process_id_fkey
        FOREIGN KEY (process_id) REFERENCES onboarding.onboarding_processes (id) ON DELETE CASCADE,
    CONSTRAINT onboarding_steps_process_position_key UNIQUE (process_id, position)
);

-- Filing numbers: drawn from public.filing_number_seq on the shared instance,
-- from this database's own sequence after the split.
CREATE SEQUENCE IF NOT EXISTS onboarding.filing_number_seq;

CREATE TABLE IF NOT EXISTS onboarding.documents (
    id             bigserial   NOT NULL,
    process_id     uuid        NOT NULL,
    filing_number  bigint      NOT NULL DEFAULT nextval('onboarding.filing_number_seq'),
    step_id        bigint,
    document_type  text        NOT NULL,
    file_name      text        NOT NULL,
    mime_type      text        NOT NULL,
    size_bytes     bigint      NOT NULL,
    content        bytea       NOT NULL,
    labels         text[]      NOT NULL DEFAULT '{}',
    verified       boolean,
    verified_by    text,
    expires_on     date,
    uploaded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT documents_pkey PRIMARY KEY (id),
    CONSTRAINT documents_process_id_fkey
        FOREIGN KEY (process_id) REFERENCES onboarding.onboarding_processes (id) ON DELETE CASCADE,
    CONSTRAINT documents_step_id_fkey
        FOREIGN KEY (step_id) REFERENCES onboarding.onboarding_steps (id) ON DELETE SET NULL,
    CONSTRAINT documents_size_bytes_check CHECK (size_bytes >= 0)
);
CREATE INDEX IF NOT EXISTS documents_process_id_idx ON onboarding.documents (process_id);
CREATE INDEX IF NOT EXISTS documents_step_id_idx ON onboarding.documents (step_id);

-- Append-only history of what happened to a process.
CREATE TABLE IF NOT EXISTS onboarding.process_events (
    id           bigserial   NOT NULL,
    process_id   uuid        NOT NULL,
    event_type   text        NOT NULL,
    actor        text,
    data         jsonb,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT process_events_pkey PRIMARY KEY (id),
    CONSTRAINT process_events_process_id_fkey
        FOREIGN KEY (process_id) REFERENCES onboarding.onboarding_processes (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS process_events_process_id_occurred_at_idx
    ON onboarding.process_events (process_id, occurred_at);
