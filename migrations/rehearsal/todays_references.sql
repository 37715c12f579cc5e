-- What the shared instance has today beyond the four init scripts: the
-- references between services that a split must deal with.

-- Onboarding, recruitment and campaign rows point at partners.
ALTER TABLE onboarding.onboarding_processes
    ADD CONSTRAINT onboarding_processes_partner_id_fkey FOREIGN KEY (partner_id) REFERENCES public.partners (id);
ALTER TABLE recruitment.job_postings
    ADD CONSTRAINT job_postings_partner_id_fkey FOREIGN KEY (partner_id) REFERENCES public.partners (id);
ALTER TABLE campaign_management.campaign_partners
    ADD CONSTRAINT campaign_partners_partner_id_fkey FOREIGN KEY (partner_id) REFERENCES public.partners (id);

-- A report view in Campaign Management over Partner Management's table.
CREATE VIEW campaign_management.partner_campaign_overview AS
SELECT p.id AS partner_id, p.legal_name, count(cp.id) AS campaigns
FROM public.partners p
JOIN campaign_management.campaign_partners cp ON cp.partner_id = p.id
GROUP BY p.id, p.legal_name;

-- Contracts and onboarding documents share one series of filing numbers.
ALTER TABLE onboarding.documents ALTER COLUMN filing_number SET DEFAULT nextval('public.filing_number_seq');
DROP SEQUENCE onboarding.filing_number_seq;
