-- What `orchestrator demo` shows after the batch: each posting of the batch as the
-- postings table has it, or the reason it was rejected. %(batch_id)s is the batch.
SELECT s.source_id,
       coalesce(p.title, s.payload->>'title')                          AS title,
       CASE WHEN s.status = 'rejected' THEN 'rejected: ' || s.reject_reason
            ELSE left(regexp_replace(p.extracted_summary, '\s+', ' ', 'g'), 60) END AS summary,
       (SELECT string_agg(k, ', ') FROM (SELECT jsonb_array_elements_text(p.skill_keywords) AS k LIMIT 4) f)
         || CASE WHEN jsonb_array_length(p.skill_keywords) > 4
                 THEN ' +' || (jsonb_array_length(p.skill_keywords) - 4) ELSE '' END AS skills,
       p.ihl_score || ' ' || p.ihl_verdict AS ihl
FROM postings_staging s
LEFT JOIN postings p ON p.posting_id = s.posting_id
WHERE s.batch_id = %(batch_id)s
ORDER BY s.id
